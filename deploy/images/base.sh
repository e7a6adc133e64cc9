#!/usr/bin/env bash
# The base image for `make images` when no registry can be pulled from: a Debian bookworm root made from Debian's
# own packages with debootstrap (minbase), holding python3 (3.11, the same interpreter as python:3.11-slim-bookworm),
# its venv module and libpcap. The shared Dockerfile is then built on it with PYTHON_IMAGE pointing here, so the
# images carry exactly the Dockerfile's steps; with a registry the same Dockerfile builds on python:3.11-slim-bookworm.
#
#   deploy/images/base.sh DIR        # DIR/rootfs (DIR is replaced); DEBIAN_MIRROR overrides the mirror
#
# Trimmed like Debian's slim images: no package lists or .deb cache, no documentation, man pages or translations,
# and a dpkg configuration that keeps later `apt-get install` steps from adding them back.
set -euo pipefail
out=${1:?usage: base.sh DIR}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
packages=python3,python3-venv,libpcap0.8,ca-certificates

rm -rf "$out"
mkdir -p "$out"
tmp=$out/rootfs.tmp
debootstrap --variant=minbase --include="$packages" bookworm "$tmp" "$mirror" > "$out/debootstrap.log" 2>&1 || {
    tail -20 "$out/debootstrap.log" >&2; exit 1; }

cat > "$tmp/etc/dpkg/dpkg.cfg.d/podcap-slim" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
CFG
find "$tmp/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
find "$tmp/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$tmp"/usr/share/man/* "$tmp"/usr/share/info/* "$tmp"/var/cache/apt/*.bin "$tmp"/var/cache/apt/archives/*.deb \
    "$tmp"/var/lib/apt/lists/* "$tmp"/var/log/* "$tmp"/tmp/*
find "$tmp/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
# As in Debian's own container images: apt keeps no .deb files and no package caches (/var/cache/apt/*.bin, ~75 MiB
# after an `apt-get update`) in any layer an image's RUN steps make.
cat > "$tmp/etc/apt/apt.conf.d/docker-clean" <<'CFG'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
CFG
# The Debian security and updates suites too, as in Debian's own images.
cat > "$tmp/etc/apt/sources.list" <<LIST
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb ${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security} bookworm-security main
LIST
# The machine's identity and resolver are the runtime's business.
: > "$tmp/etc/hostname"
: > "$tmp/etc/resolv.conf"
rm -f "$tmp/etc/machine-id"
mv "$tmp" "$out/rootfs"
echo "base: $(du -sh "$out/rootfs" | cut -f1) in $out/rootfs"
