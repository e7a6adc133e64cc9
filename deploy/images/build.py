#!/usr/bin/env python3
"""Build OCI image archives from a Dockerfile with no daemon and no registry: what `make images` runs.

Docker, podman and buildah build ``deploy/images/Dockerfile`` wherever they exist. This machine (and CI) has none of
them and cannot pull ``python:3.11-slim-bookworm``; it has root, ``chroot`` and ``unshare``. So this script executes
the same Dockerfile itself, instruction by instruction, on a base root filesystem given as a directory (the
debootstrap root of ``base.sh``), and writes one ``oci-layout`` tar per target that ``ctr images import``, ``podman
load`` or ``skopeo copy oci-archive:`` accept. Only the instructions the Dockerfile uses are understood (``ARG FROM
ENV LABEL WORKDIR COPY RUN USER ENTRYPOINT CMD``); anything else stops the build, so the Dockerfile cannot grow a
feature that this builder silently skips.

- Stages are root filesystems under the work directory, each a copy of its parent's; a stage is built once even if
  several targets need it (the builder stage is shared by the agent and the collector).
- ``RUN`` runs ``/bin/sh -c`` chrooted into the stage, in a private mount and PID namespace (``unshare``) with
  ``/proc`` and the host's ``resolv.conf`` mounted for the step's duration: every mount and process of a step is gone
  when it ends, even if the build is interrupted. The network is the host's (apt and pip reach their mirrors).
- Layers: the base, then one layer per stage of the target's ``FROM`` chain holding what the stage changed (added or
  modified files, whiteouts for removed ones), so the agent and the collector share their lower layers. Tars are
  deterministic (sorted, numeric owners, no host names); layers are gzip-compressed.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import platform
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from typing import Any

ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SKIP_CONTENT = ("dev", "proc", "sys")  # the runtime mounts these; keep the directories only


class BuildError(Exception):
    pass


@dataclass
class Instruction:
    keyword: str
    text: str
    line: int


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[Instruction] = field(default_factory=list)


@dataclass
class Image:
    """A built stage: its root filesystem, its config, and the chain of root filesystems its layers come from."""

    rootfs: str
    chain: list[str]  # lowest first; each a directory whose diff against the previous one is a layer
    env: dict[str, str]
    config: dict[str, Any]


def parse(text: str) -> tuple[list[Instruction], list[Stage]]:
    """The global ARGs before the first FROM, and the stages."""
    lines: list[tuple[int, str]] = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append((start, pending + stripped))
        pending = ""
    if pending:
        lines.append((start, pending))
    preamble: list[Instruction] = []
    stages: list[Stage] = []
    for number, line in lines:
        keyword, _, rest = line.partition(" ")
        inst = Instruction(keyword.upper(), rest.strip(), number)
        if inst.keyword == "FROM":
            words = inst.text.split()
            if len(words) == 3 and words[1].upper() == "AS":
                stages.append(Stage(words[2], words[0]))
            elif len(words) == 1:
                stages.append(Stage(str(len(stages)), words[0]))
            else:
                raise BuildError(f"line {number}: unsupported FROM: {inst.text}")
        elif not stages:
            if inst.keyword != "ARG":
                raise BuildError(f"line {number}: only ARG may precede the first FROM")
            preamble.append(inst)
        else:
            stages[-1].instructions.append(inst)
    return preamble, stages


def expand(text: str, env: dict[str, str]) -> str:
    """``$VAR`` and ``${VAR}`` as Dockerfiles expand them in ENV, ARG, FROM, COPY, WORKDIR, USER and LABEL."""

    def sub(m: re.Match[str]) -> str:
        return env.get(m.group(1) or m.group(2), "")

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)", sub, text)


def key_values(text: str, env: dict[str, str]) -> dict[str, str]:
    """``K=V K2="v w"`` (ENV, LABEL, ARG)."""
    out: dict[str, str] = {}
    for word in shlex.split(text):
        key, sep, value = word.partition("=")
        if not sep:
            raise BuildError(f"expected KEY=VALUE, got {word!r}")
        out[key] = expand(value, {**env, **out})
    return out


class Builder:
    def __init__(self, dockerfile: str, context: str, workdir: str, *, build_args: dict[str, str],
                 images: dict[str, str]) -> None:
        with open(dockerfile) as f:
            self.preamble, self.stages = parse(f.read())
        self.context = os.path.abspath(context)
        self.workdir = os.path.abspath(workdir)
        self.images = {name: os.path.abspath(path) for name, path in images.items()}
        self.global_args: dict[str, str] = {}
        for inst in self.preamble:
            name, _, default = inst.text.partition("=")
            self.global_args[name] = build_args.get(name, default)
        self.build_args = build_args
        self.built: dict[str, Image] = {}

    # -- stages --------------------------------------------------------------------------------------------------

    def stage(self, name: str) -> Image:
        if name in self.built:
            return self.built[name]
        matches = [s for s in self.stages if s.name == name]
        if not matches:
            raise BuildError(f"no stage {name!r} in the Dockerfile")
        stage = matches[0]
        parent = self._from(expand(stage.base, self.global_args))
        rootfs = os.path.join(self.workdir, "stages", stage.name)
        if os.path.exists(rootfs):
            shutil.rmtree(rootfs)
        os.makedirs(os.path.dirname(rootfs), exist_ok=True)
        subprocess.run(["cp", "-a", "--reflink=auto", parent.rootfs, rootfs], check=True)
        image = Image(rootfs, [*parent.chain, rootfs], dict(parent.env), json.loads(json.dumps(parent.config)))
        args: dict[str, str] = {}
        started = time.monotonic()
        for inst in stage.instructions:
            self._execute(stage, image, inst, args)
        print(f"stage {stage.name}: {time.monotonic() - started:.1f} s", file=sys.stderr)
        self.built[name] = image
        return image

    def _from(self, base: str) -> Image:
        if any(s.name == base for s in self.stages):
            return self.stage(base)
        if base not in self.images:
            raise BuildError(f"FROM {base}: no such stage and no local root filesystem for it (--image {base}=DIR)")
        rootfs = self.images[base]
        return Image(rootfs, [rootfs], {"PATH": DEFAULT_PATH}, {"Env": [f"PATH={DEFAULT_PATH}"]})

    def _execute(self, stage: Stage, image: Image, inst: Instruction, args: dict[str, str]) -> None:
        scope = {**image.env, **args}
        config = image.config
        keyword, text = inst.keyword, inst.text
        print(f"[{stage.name}] {keyword} {text[:100]}", file=sys.stderr)
        if keyword == "ARG":
            name, sep, default = text.partition("=")
            value = self.build_args.get(name, self.global_args.get(name, default) if not sep else default)
            args[name] = value
        elif keyword == "ENV":
            image.env.update(key_values(text, scope))
            config["Env"] = [f"{k}={v}" for k, v in image.env.items()]
        elif keyword == "LABEL":
            config.setdefault("Labels", {}).update(key_values(text, scope))
        elif keyword == "WORKDIR":
            path = os.path.join(config.get("WorkingDir") or "/", expand(text, scope))
            config["WorkingDir"] = path
            os.makedirs(self._inside(image, path), exist_ok=True)
        elif keyword == "USER":
            config["User"] = expand(text, scope)
        elif keyword in ("ENTRYPOINT", "CMD"):
            value = json.loads(text)
            if not isinstance(value, list):
                raise BuildError(f"line {inst.line}: {keyword} must use the JSON (exec) form")
            config["Entrypoint" if keyword == "ENTRYPOINT" else "Cmd"] = value
        elif keyword == "COPY":
            self._copy(image, expand(text, scope), inst)
        elif keyword == "RUN":
            self._run(image, text, {**args, **image.env}, inst)
        else:
            raise BuildError(f"line {inst.line}: {keyword} is not supported by this builder")

    def _inside(self, image: Image, path: str) -> str:
        return os.path.join(image.rootfs, path.lstrip("/"))

    def _copy(self, image: Image, text: str, inst: Instruction) -> None:
        words = text.split()
        source_root = self.context
        if words[0].startswith("--from="):
            source_root = self.stage(words[0].split("=", 1)[1]).rootfs
            words = words[1:]
        if any(w.startswith("--") for w in words) or len(words) < 2:
            raise BuildError(f"line {inst.line}: unsupported COPY: {text}")
        *sources, dest = words
        dest_path = os.path.join(image.config.get("WorkingDir") or "/", dest)
        target = self._inside(image, dest_path)
        for source in sources:
            src = os.path.join(source_root, source.lstrip("/"))
            if not os.path.exists(src):
                raise BuildError(f"line {inst.line}: COPY source {source} does not exist")
            if os.path.isdir(src):
                # Like Docker: the directory's contents (all of them) go into the destination directory.
                shutil.copytree(src, target, symlinks=True, dirs_exist_ok=True)
            else:
                into = target if dest.endswith("/") or os.path.isdir(target) else os.path.dirname(target)
                os.makedirs(into, exist_ok=True)
                shutil.copy2(src, target if not (dest.endswith("/") or os.path.isdir(target)) else into)
        for root, dirs, files in os.walk(target):
            for entry in [root, *(os.path.join(root, n) for n in dirs + files)]:
                os.lchown(entry, 0, 0)

    def _run(self, image: Image, command: str, env: dict[str, str], inst: Instruction) -> None:
        rootfs = image.rootfs
        user = image.config.get("User") or "0:0"
        workdir = image.config.get("WorkingDir") or "/"
        run_env = {"HOME": "/root", "PATH": DEFAULT_PATH, **env}
        # The step's own mount namespace: /proc, the host's resolver and the host's trust anchors (the step uses the
        # host's network, and a proxy on it may present its own CA) exist only while it runs.
        bundle = "/etc/ssl/certs/ca-certificates.crt"
        trust = ""
        if os.path.isfile(bundle):
            inside = shlex.quote(rootfs + bundle)
            trust = f"mkdir -p {shlex.quote(os.path.dirname(rootfs + bundle))} && touch {inside} && " \
                    f"mount --bind {bundle} {inside} && "
        setup = (
            f"mount -t proc proc {shlex.quote(rootfs)}/proc && "
            f"touch {shlex.quote(rootfs)}/etc/resolv.conf && "
            f"mount --bind /etc/resolv.conf {shlex.quote(rootfs)}/etc/resolv.conf && "
            f"{trust}"
            f"exec chroot --userspec={shlex.quote(user)} {shlex.quote(rootfs)} "
            f"/usr/bin/env -i {' '.join(shlex.quote(f'{k}={v}') for k, v in run_env.items())} "
            f"/bin/sh -c {shlex.quote(f'cd {shlex.quote(workdir)} && {command}')}"
        )
        result = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--mount-proc", "sh", "-c", setup],
            check=False,
        )
        if result.returncode != 0:
            raise BuildError(f"line {inst.line}: RUN failed ({result.returncode}): {command[:200]}")

    # -- output ----------------------------------------------------------------------------------------------

    def write(self, target: str, name: str, out: str, blob_cache: dict[str, tuple[bytes, str]]) -> list[int]:
        """Write ``target`` as ``name`` into the oci-layout tar ``out``; returns the compressed layer sizes."""
        image = self.stage(target)
        layers: list[tuple[bytes, str]] = []  # (compressed blob, diff id)
        for lower, upper in zip([None, *image.chain[:-1]], image.chain, strict=True):
            key = f"{lower}->{upper}"
            if key not in blob_cache:
                raw = layer_tar(upper, lower)
                diff_id = "sha256:" + hashlib.sha256(raw).hexdigest()
                blob_cache[key] = (gzip.compress(raw, compresslevel=6, mtime=0), diff_id)
            layers.append(blob_cache[key])
        config = {k: v for k, v in image.config.items() if v}
        image_config = {
            "architecture": ARCH,
            "os": "linux",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": [d for _, d in layers]},
        }
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        tmp = out + ".tmp"
        with tarfile.open(tmp, "w") as tf:

            def blob(data: bytes) -> dict[str, Any]:
                digest = hashlib.sha256(data).hexdigest()
                add_bytes(tf, f"blobs/sha256/{digest}", data)
                return {"digest": f"sha256:{digest}", "size": len(data)}

            manifest = {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           **blob(json.dumps(image_config, sort_keys=True).encode())},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **blob(data)}
                           for data, _ in layers],
            }
            tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else "latest"
            index = {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": [{
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    **blob(json.dumps(manifest, sort_keys=True).encode()),
                    "platform": {"architecture": ARCH, "os": "linux"},
                    "annotations": {"io.containerd.image.name": normalized(name),
                                    "org.opencontainers.image.ref.name": tag},
                }],
            }
            add_bytes(tf, "index.json", json.dumps(index).encode())
            add_bytes(tf, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        os.replace(tmp, out)
        return [len(data) for data, _ in layers]


def normalized(name: str) -> str:
    """The full reference a kubelet asks the runtime for: ``podcap-agent:0.1.0`` -> ``docker.io/library/...``."""
    first = name.split("/", 1)[0]
    if "/" not in name:
        return f"docker.io/library/{name}"
    if "." in first or ":" in first or first == "localhost":
        return name
    return f"docker.io/{name}"


def add_bytes(tf: tarfile.TarFile, path: str, data: bytes) -> None:
    info = tarfile.TarInfo(path)
    info.size, info.mode = len(data), 0o644
    tf.addfile(info, io.BytesIO(data))


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_mode, a.st_uid, a.st_gid, a.st_size, a.st_mtime_ns) == (b.st_mode, b.st_uid, b.st_gid, b.st_size,
                                                                           b.st_mtime_ns)


def layer_tar(upper: str, lower: str | None) -> bytes:
    """A tar of ``upper`` (whole, or what differs from ``lower`` with OCI whiteouts for what it removed)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:

        def add(rel: str) -> None:
            path = os.path.join(upper, rel)
            info = tf.gettarinfo(path, arcname=rel)
            if info.islnk():  # hard links become plain files: their target may live in a lower layer
                info = tarfile.TarInfo(rel)
                st = os.lstat(path)
                info.size, info.mode, info.mtime = st.st_size, stat.S_IMODE(st.st_mode), int(st.st_mtime)
                info.uid, info.gid = st.st_uid, st.st_gid
            info.uname = info.gname = ""
            if info.isreg():
                with open(path, "rb") as f:
                    tf.addfile(info, f)
            else:
                tf.addfile(info)

        def walk(rel: str) -> None:
            here = os.path.join(upper, rel)
            names = sorted(os.listdir(here))
            if lower is not None:
                below = os.path.join(lower, rel)
                if os.path.isdir(below) and not os.path.islink(below):
                    for gone in sorted(set(os.listdir(below)) - set(names)):
                        info = tarfile.TarInfo(os.path.join(rel, ".wh." + gone))
                        tf.addfile(info)
            for name in names:
                child = os.path.join(rel, name) if rel else name
                path = os.path.join(upper, child)
                st = os.lstat(path)
                old: os.stat_result | None = None
                if lower is not None:
                    try:
                        old = os.lstat(os.path.join(lower, child))
                    except FileNotFoundError:
                        old = None
                is_dir = stat.S_ISDIR(st.st_mode)
                replaced = old is not None and stat.S_ISDIR(old.st_mode) != is_dir
                changed = old is None or replaced or not _same(st, old) or (
                    stat.S_ISLNK(st.st_mode) and os.readlink(path) != os.readlink(os.path.join(lower or "", child)))
                if changed:
                    if replaced:
                        tf.addfile(tarfile.TarInfo(os.path.join(rel, ".wh." + name)))
                    add(child)
                if not is_dir or (rel == "" and name in SKIP_CONTENT):
                    continue
                if old is None or replaced:
                    walk_all(child)
                else:
                    walk(child)

        def walk_all(rel: str) -> None:
            for name in sorted(os.listdir(os.path.join(upper, rel))):
                child = os.path.join(rel, name)
                add(child)
                if os.path.isdir(os.path.join(upper, child)) and not os.path.islink(os.path.join(upper, child)):
                    walk_all(child)

        walk("")
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("-f", "--file", required=True, help="the Dockerfile")
    parser.add_argument("--context", default=".", help="the build context (default: .)")
    parser.add_argument("--workdir", required=True, help="where stage root filesystems are kept (replaced)")
    parser.add_argument("--build-arg", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--image", action="append", default=[], metavar="NAME=DIR",
                        help="a FROM image given as a root filesystem directory")
    parser.add_argument("--target", action="append", default=[], required=True, metavar="STAGE=NAME:TAG=OUT.tar",
                        help="build STAGE and write it as image NAME:TAG into the oci-layout tar OUT.tar")
    ns = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("build.py needs root (chroot, unshare, files owned by other uids)", file=sys.stderr)
        return 2
    build_args = dict(a.split("=", 1) for a in ns.build_arg)
    images = dict(a.split("=", 1) for a in ns.image)
    if os.path.exists(os.path.join(ns.workdir, "stages")):
        shutil.rmtree(os.path.join(ns.workdir, "stages"))
    builder = Builder(ns.file, ns.context, ns.workdir, build_args=build_args, images=images)
    blobs: dict[str, tuple[bytes, str]] = {}
    try:
        for spec in ns.target:
            stage, name, out = spec.split("=", 2)
            started = time.monotonic()
            sizes = builder.write(stage, name, out, blobs)
            print(f"{name}: {out} {os.path.getsize(out) / 2**20:.1f} MiB "
                  f"(layers {', '.join(f'{s / 2**20:.1f}' for s in sizes)} MiB compressed; "
                  f"{time.monotonic() - started:.1f} s)", file=sys.stderr)
    except BuildError as e:
        print(f"build failed: {e}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(os.path.join(ns.workdir, "stages"), ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
