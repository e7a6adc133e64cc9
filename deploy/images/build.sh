#!/usr/bin/env bash
# Build the podcap images as OCI archives with buildah, from deploy/images/Dockerfile, with no daemon and no
# registry: what `make images` runs. buildah executes the Dockerfile with Docker's own semantics (ARG/ENV expansion,
# COPY and .dockerignore, RUN, multi-stage, --target), so the archives are what `docker build` makes of the same
# file; only the base differs when no registry can be reached (PYTHON_IMAGE, a Debian root from base.sh).
#
#   deploy/images/build.sh BASE_ROOTFS OUT_DIR TAG
#
# BASE_ROOTFS: a root filesystem directory (base.sh) that becomes localhost/podcap-base:bookworm.
# OUT_DIR:     gets podcap-agent.oci.tar and podcap-collector.oci.tar, and buildah's own storage (storage-DRIVER/,
#              kept between builds so unchanged stages are reused). The overlay driver where the kernel lets root
#              mount overlays (2.5 min for both images here), else vfs (no overlay or fuse needed; 6 min, since it
#              copies every layer); PODCAP_BUILDAH_DRIVER chooses.
# Each archive names its image docker.io/library/podcap-ROLE:TAG, the reference a kubelet asks containerd for when a
# manifest says `image: podcap-ROLE:TAG`, so `ctr images import` makes it available under that name.
set -euo pipefail
rootfs=${1:?usage: build.sh BASE_ROOTFS OUT_DIR TAG}
out=${2:?usage: build.sh BASE_ROOTFS OUT_DIR TAG}
tag=${3:?usage: build.sh BASE_ROOTFS OUT_DIR TAG}
repo=$(cd "$(dirname "$0")/../.." && pwd)
out=$(mkdir -p "$out" && cd "$out" && pwd)
base=localhost/podcap-base:bookworm
use() { buildah=(buildah --root "$out/storage-$1/root" --runroot "$out/storage-$1/run" --storage-driver "$1"); }

# The base image: the debootstrap root as one layer (FROM scratch + ADD of its tar, as Debian's own images are made).
# Its build is the first mount buildah makes: where overlay fails, everything is built with vfs.
ctx=$out/base-context
rm -rf "$ctx" && mkdir -p "$ctx"
tar -C "$rootfs" --numeric-owner -cf "$ctx/rootfs.tar" .
printf 'FROM scratch\nADD rootfs.tar /\nCMD ["/bin/bash"]\n' > "$ctx/Containerfile"
base_image() { "${buildah[@]}" bud --quiet --isolation chroot --layers -f "$ctx/Containerfile" -t "$base" "$ctx" >/dev/null; }
if [ -n "${PODCAP_BUILDAH_DRIVER:-}" ]; then
    use "$PODCAP_BUILDAH_DRIVER"
    base_image
else
    use overlay
    if ! base_image; then
        echo "buildah: the overlay driver does not work here; building with vfs"
        use vfs
        base_image
    fi
fi
rm -rf "$ctx"

# RUN steps use the host's network; a proxy on it may present its own CA, so they see the host's trust anchors
# (mounted for the step only: nothing of it lands in a layer).
trust=()
bundle=/etc/ssl/certs/ca-certificates.crt
[ -f "$bundle" ] && trust=(--volume "$bundle:$bundle:ro")
for role in agent collector; do
    image=localhost/podcap-$role:$tag
    "${buildah[@]}" bud --isolation chroot --layers "${trust[@]}" --build-arg "PYTHON_IMAGE=$base" --target "$role" \
        -f "$repo/deploy/images/Dockerfile" -t "$image" "$repo"
    archive=$out/podcap-$role.oci.tar
    rm -f "$archive.tmp"
    "${buildah[@]}" push --quiet --compression-format gzip "$image" "oci-archive:$archive.tmp:docker.io/library/podcap-$role:$tag"
    mv "$archive.tmp" "$archive"
    echo "podcap-$role:$tag $(du -m "$archive" | cut -f1) MiB -> $archive"
done
