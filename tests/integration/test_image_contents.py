"""What ``make images`` put into the agent and collector archives: the virtualenv with podcap's C library and the
entry point, Debian's libpcap, and nothing of the build (no compiler, headers, wheels or sources), with the
Dockerfile's user, entry point and environment in the image config. Reads the oci-layout tars directly."""

from __future__ import annotations

import fnmatch
import gzip
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest

IMAGES = Path(__file__).resolve().parents[2] / "build" / "images"


def _image(role: str) -> tuple[dict[str, Any], set[str]]:
    archive = IMAGES / f"podcap-{role}.oci.tar"
    if not archive.exists():
        if os.environ.get("PODCAP_REQUIRE_NODE") == "1":
            pytest.fail(f"{archive} is missing: run `make images` [PODCAP_REQUIRE_NODE=1]")
        pytest.skip(f"{archive} is missing: run `make images`")
    with tarfile.open(archive) as tf:

        def blob(digest: str) -> bytes:
            member = tf.extractfile(f"blobs/sha256/{digest.split(':', 1)[1]}")
            assert member is not None
            return member.read()

        index = json.loads(tf.extractfile("index.json").read())  # type: ignore[union-attr]
        (entry,) = index["manifests"]
        # The reference containerd imports the image as: what a kubelet asks for when a manifest says
        # `image: podcap-ROLE:0.1.0` (buildah writes it as the OCI ref name).
        assert entry["annotations"]["org.opencontainers.image.ref.name"] == f"docker.io/library/podcap-{role}:0.1.0"
        manifest = json.loads(blob(entry["digest"]))
        config = json.loads(blob(manifest["config"]["digest"]))
        names: set[str] = set()
        for layer in manifest["layers"]:
            data = blob(layer["digest"])
            if layer["mediaType"].endswith("+gzip"):
                data = gzip.decompress(data)
            with tarfile.open(fileobj=io.BytesIO(data)) as lt:
                names.update(n.lstrip("./") for n in lt.getnames())
    return config, names


@pytest.mark.parametrize(("role", "user"), [("agent", "0:0"), ("collector", "65532:65532")])
def test_runtime_image_holds_the_venv_and_libpcap_and_nothing_of_the_build(role: str, user: str) -> None:
    config, names = _image(role)
    assert config["config"]["Entrypoint"] == [f"podcap-{role}"]
    assert config["config"]["User"] == user
    assert any(e.startswith("PATH=/opt/podcap/bin:") for e in config["config"]["Env"])
    assert f"opt/podcap/bin/podcap-{role}" in names
    for part in ("walk", "chunks", "merge"):
        assert fnmatch.filter(names, f"opt/podcap/lib/python3.11/site-packages/podcap/_native_{part}*.so"), part
    assert fnmatch.filter(names, "usr/lib/*/libpcap.so.0.8"), "no libpcap"
    # Bytecode compiled at build time: the root filesystem is read-only at run time.
    assert "opt/podcap/lib/python3.11/site-packages/podcap/__pycache__" in names
    for pattern in ("var/cache/apt/*.bin", "var/lib/apt/lists/*Packages*", "usr/bin/gcc*", "usr/bin/cc",
                    "usr/bin/g++*", "usr/include/pcap*", "wheels/*", "src/*", "opt/podcap/bin/pip"):
        assert not fnmatch.filter(names, pattern), f"{pattern} in the {role} image"
