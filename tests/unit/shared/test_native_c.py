"""podcap's C as one body (proto/podcap/native/): every C source lives there, compiles without a single warning, and
agrees with the Python that loads it (the header's error codes are ``podcap.native.Error``; the loaders' ctypes
structs are laid out as the C structs; each part is its own library; ``PODCAP_NO_NATIVE=1`` leaves every part out
and the Python paths still work)."""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from podcap import native

REPO = Path(__file__).resolve().parents[3]
NATIVE = REPO / "proto" / "podcap" / "native"
HEADER = NATIVE / "podcap_native.h"
# What CI compiles with: the build's own flags are -O2 -std=c99 -Wall; any warning fails here.
STRICT = ["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-Wmissing-prototypes", "-Wstrict-prototypes", "-fPIC"]


def _header_error_codes() -> dict[str, int]:
    text = HEADER.read_text()
    body = re.search(r"enum podcap_error \{(.*?)\};", text, re.S)
    assert body, "no enum podcap_error in podcap_native.h"
    entries = [line.split("/*")[0].strip().rstrip(",") for line in body.group(1).splitlines()]
    codes: dict[str, int] = {}
    for entry in filter(None, entries):
        m = re.fullmatch(r"PODCAP_([A-Z_]+) = (\d+)", entry)
        assert m, f"every enumerator has its value written out: {entry!r}"
        codes[m.group(1)] = int(m.group(2))
    return codes


def test_the_headers_error_codes_are_the_python_enum() -> None:
    assert _header_error_codes() == {e.name: e.value for e in native.Error}


def test_every_c_source_is_in_the_native_directory_and_built() -> None:
    tracked = subprocess.run(["git", "ls-files", "*.c", "*.h"], cwd=REPO, capture_output=True, text=True, check=True)
    outside = [p for p in tracked.stdout.split() if not p.startswith("proto/podcap/native/")]
    assert outside == ["tests/node/pause.c"]  # the test pause container's init, not part of podcap
    exts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["ext-modules"]
    built = sorted(src for ext in exts for src in ext["sources"])
    assert built == sorted(str(p.relative_to(REPO)) for p in NATIVE.glob("*.c"))
    assert {ext["name"] for ext in exts} == {f"podcap._native_{part}" for part in native.PARTS}


@pytest.mark.parametrize("source", sorted(p.name for p in NATIVE.glob("*.c")))
def test_c_compiles_without_warnings(source: str, tmp_path: Path) -> None:
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc, "no C compiler (make deps installs gcc)"
    done = subprocess.run([cc, *STRICT, "-c", str(NATIVE / source), "-o", str(tmp_path / "out.o")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_each_part_is_its_own_library() -> None:
    """A program loads only what it needs: the walker's library has no merge, the agent's no walker, and so on."""
    own = {"walk": "podcap_scan_records", "chunks": "podcap_chunk_handler", "merge": "podcap_merge_run"}
    for part in native.PARTS:
        lib = native.library(part)
        assert lib is not None, f"podcap._native_{part} is not built: is a C compiler installed?"
        for other, symbol in own.items():
            assert hasattr(lib, symbol) == (other == part), (part, symbol)


def test_no_native_leaves_every_part_out_and_python_still_walks() -> None:
    code = """
from podcap import native, pcapwalk
from podcap.formats import pcap as pcapfile
from podcap.agent.capture import chunkbuf
from podcap.collector.cli.get import pcapmerge
assert native.missing() == list(native.PARTS)
assert not (pcapwalk.available() or chunkbuf.available() or pcapmerge.available())
fmt = pcapfile.FileFormat(1, 65535, True)
rec = bytes(16)
print(pcapfile.scan_records(rec * 3, fmt).packets)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PODCAP_NO_NATIVE": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "3"


def test_the_loaders_structs_are_the_c_structs(tmp_path: Path) -> None:
    """Every struct a loader passes to C mirrors it field for field: offsets and sizes as the compiler lays them out."""
    from podcap import pcapwalk
    from podcap.agent.capture import chunkbuf
    from podcap.collector.cli.get import pcapmerge

    mirrors = {"podcap_scan": pcapwalk._Scan, "podcap_merge_error": pcapmerge._Error,
               "podcap_chunkbuf": chunkbuf._Buf, "podcap_chunk": chunkbuf._Chunk, "podcap_trigger": chunkbuf._Trigger}
    lines = ["#include <stddef.h>", "#include <stdio.h>", f'#include "{NATIVE / "chunks.c"}"', "int main(void) {"]
    for struct, mirror in mirrors.items():
        lines.append(f'    printf("{struct} size %zu\\n", sizeof(struct {struct}));')
        for name, *_ in mirror._fields_:
            lines.append(f'    printf("{struct} {name} %zu\\n", offsetof(struct {struct}, {name}));')
    lines += ["    return 0;", "}"]
    (tmp_path / "layout.c").write_text("\n".join(lines) + "\n")
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc, "no C compiler (make deps installs gcc)"
    built = subprocess.run([cc, "-std=c99", "-I", str(NATIVE), str(tmp_path / "layout.c"), "-o", str(tmp_path / "lay")],
                           capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    c_layout = subprocess.run([str(tmp_path / "lay")], capture_output=True, text=True, check=True).stdout.splitlines()
    py_layout = []
    for struct, mirror in mirrors.items():
        py_layout.append(f"{struct} size {ctypes.sizeof(mirror)}")
        py_layout += [f"{struct} {name} {getattr(mirror, name).offset}" for name, *_ in mirror._fields_]
    assert c_layout == py_layout
