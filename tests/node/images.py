"""Single-layer OCI image archives built by hand, for the test node: no registry, no network, no Docker.

``ctr images import`` accepts an oci-layout tar (``oci-layout``, ``index.json``, ``blobs/sha256/...``) whose index
annotates the image name. Two images are needed: the sandbox ("pause") image with our static ``pause`` binary, and
a workload image made of the static busybox with one symlink per applet and an ``/etc/passwd`` that knows uid 65534.
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
import struct
import subprocess
import tarfile
from dataclasses import dataclass, field
from typing import Any

_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


@dataclass
class Layer:
    files: dict[str, tuple[bytes, int]] = field(default_factory=dict)  # path -> (content, mode)
    dirs: dict[str, int] = field(default_factory=dict)  # path -> mode
    symlinks: dict[str, str] = field(default_factory=dict)  # path -> target

    def tar(self) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
            for path, mode in sorted(self.dirs.items()):
                info = tarfile.TarInfo(path)
                info.type, info.mode = tarfile.DIRTYPE, mode
                tf.addfile(info)
            for path, (data, mode) in sorted(self.files.items()):
                _add_bytes(tf, path, data, mode)
            for path, target in sorted(self.symlinks.items()):
                info = tarfile.TarInfo(path)
                info.type, info.linkname = tarfile.SYMTYPE, target
                tf.addfile(info)
        return buf.getvalue()


def _add_bytes(tf: tarfile.TarFile, path: str, data: bytes, mode: int) -> None:
    info = tarfile.TarInfo(path)
    info.size, info.mode = len(data), mode
    tf.addfile(info, io.BytesIO(data))


def is_static_elf(path: str) -> bool:
    """True if the ELF64 file at ``path`` has no PT_INTERP program header (needs no dynamic loader)."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"\x7fELF" or data[4] != 2:
        return False
    (phoff,) = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    return all(struct.unpack_from("<I", data, phoff + i * phentsize)[0] != 3 for i in range(phnum))


def write_image(out: str, name: str, layer: Layer, config: dict[str, Any]) -> None:
    """Write an oci-layout tar holding one image ``name`` (``repo:tag``) made of ``layer``."""
    layer_tar = layer.tar()
    image_config = {
        "architecture": _ARCH,
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer_tar).hexdigest()]},
    }
    with tarfile.open(out, "w") as tf:

        def blob(data: bytes) -> dict[str, Any]:
            digest = hashlib.sha256(data).hexdigest()
            _add_bytes(tf, f"blobs/sha256/{digest}", data, 0o644)
            return {"digest": f"sha256:{digest}", "size": len(data)}

        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                **blob(json.dumps(image_config, sort_keys=True).encode()),
            },
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **blob(layer_tar)}],
        }
        index = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    **blob(json.dumps(manifest, sort_keys=True).encode()),
                    "platform": {"architecture": _ARCH, "os": "linux"},
                    "annotations": {
                        "io.containerd.image.name": name,
                        "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1],
                    },
                }
            ],
        }
        _add_bytes(tf, "index.json", json.dumps(index).encode(), 0o644)
        _add_bytes(tf, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}', 0o644)


def pause_image(out: str, name: str, pause_binary: str) -> None:
    with open(pause_binary, "rb") as f:
        layer = Layer(files={"pause": (f.read(), 0o755)})
    write_image(out, name, layer, {"Entrypoint": ["/pause"], "User": "65535:65535"})


def busybox_image(out: str, name: str, busybox: str) -> None:
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
    with open(busybox, "rb") as f:
        layer = Layer(files={"bin/busybox": (f.read(), 0o755)})
    for d in ("bin", "etc", "proc", "sys", "dev", "root", "var"):
        layer.dirs[d] = 0o755
    layer.dirs["tmp"] = 0o1777
    layer.symlinks.update({f"bin/{a}": "busybox" for a in applets if a != "busybox"})
    layer.files["etc/passwd"] = (b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n", 0o644)
    layer.files["etc/group"] = (b"root:x:0:\nnogroup:x:65534:\n", 0o644)
    write_image(out, name, layer, {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"], "WorkingDir": "/"})
