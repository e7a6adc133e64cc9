"""No traceback, whatever the user types (issue 26, items 6-8): every command of the CLI, with malformed values of
every one of its options, ends with at most one line on stderr starting with the program's name and a non-zero exit
(or accepts the value) — never a traceback and never the "internal error" line that stands in for one. The cases
the issue met are checked by running the real program (its stderr, gRPC's C core logging included); the rest in
process, against a collector address where nothing listens.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import click
import pytest

from podcap.collector.cli import main
from podcap.collector.cli.client import DEFAULT_PORT, collector_address

MALFORMED = ["", "-1", "0", "x", "1h-", "99999999999999999999999", "1e400", "[bold]x[/bold]", "%s%n", "../..",
             "s3://", "/nonexistent/x.pem"]
NOWHERE = "127.0.0.1:1"
# Values that would do real work when they happen to be valid: the demo's output directory (it would run the demo).
SKIP = {("demo", "--out")}


def _commands(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    for name, cmd in sorted(group.commands.items()):
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*path, name))
        else:
            yield (*path, name), cmd


def _base(path: tuple[str, ...], out: str) -> list[str]:
    """The command with its required arguments, valid ones."""
    required = {"stop": ["abc123"], "status": ["abc123"], "follow": ["abc123"], "delete": ["abc123"],
                "get": ["abc123", "-o", out],
                "completion": ["bash"]}
    return [*path, *required.get(path[-1], [])]


def _cases() -> Iterator[tuple[list[str], str]]:
    for path, cmd in _commands(main.cli):
        for param in cmd.params:
            if not isinstance(param, click.Option) or param.is_flag or param.name == "help":
                continue
            if (path[-1], param.opts[-1]) in SKIP:
                continue
            yield [*path], param.opts[-1]
    for opt in ("--collector", "--tls-ca", "--token"):
        yield [], opt


def run(argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["podcap", *argv])
    code = 0
    try:
        main.main(argv)
    except SystemExit as e:
        code = int(e.code or 0)
    return code, capsys.readouterr().err


@pytest.fixture
def sandbox(tmp_path: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A working directory and HOME of the test's own (``certs``, ``extcap install`` and ``-o`` write there), no
    PODCAP_ settings from the environment, and a demo that cannot run."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    for key in [k for k in os.environ if k.startswith("PODCAP_") or k.startswith("S3_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("PODCAP_COLLECTOR", NOWHERE)

    def no_demo(*_: object, **__: object) -> None:
        raise AssertionError("the demo ran")

    import podcap.collector.demo.run as demo_run

    monkeypatch.setattr(demo_run, "run_demo", no_demo)
    return str(tmp_path)


@pytest.mark.parametrize(("path", "option"), list(_cases()), ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_malformed_values_of_every_option_are_one_line(path: list[str], option: str, sandbox: str,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = os.path.join(sandbox, "out")
    for value in MALFORMED:
        snapshot = dict(os.environ)
        if path:
            argv = [*_base(tuple(path), out), option, value]
        else:  # a global option: before the command
            argv = [option, value, *_base(("list",), out)]
        code, err = run(argv, monkeypatch, capsys)
        os.environ.clear()
        os.environ.update(snapshot)  # the CLI sets PODCAP_TLS_CA/PODCAP_TOKEN for its verbs
        lines = err.strip().splitlines()
        assert "Traceback" not in err and "internal error" not in err and "the demo ran" not in err, (argv, err)
        if code != 0:
            assert len(lines) == 1 and lines[0].startswith("podcap"), (argv, err)


# ---- what the issue met, through the real program ----


def podcap(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    exe = os.path.join(os.path.dirname(sys.executable), "podcap")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PODCAP_", "GRPC_", "S3_"))}
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=60, env={**base, **(env or {})})


@pytest.mark.parametrize(("args", "needle"), [
    (["get", "--from", "capture/try/abc", "-o", "x"], "is not s3://BUCKET/PREFIX/CAPTURE"),
    (["get", "--from", "s3://", "-o", "x"], "is not s3://BUCKET/PREFIX/CAPTURE"),
    (["get", "--from", "s3://bucket", "-o", "x"], "names no capture"),
    (["get", "--from", "s3://b/p/abc", "--s3-endpoint", "127.0.0.1:58515", "-o", "x"],
     "--s3-endpoint '127.0.0.1:58515' is not a URL: give http://127.0.0.1:58515"),
    (["get", "abc", "--s3-endpoint", "http://127.0.0.1:1", "-o", "x"], "--s3-endpoint applies to --from"),
    (["--tls-ca", "/nonexistent.pem", "--collector", NOWHERE, "list"],
     "cannot read the CA certificate /nonexistent.pem: No such file or directory"),
    (["--tls-ca", "/etc/hostname", "--collector", NOWHERE, "list"], "/etc/hostname is not a PEM CA certificate"),
    (["--collector", "host:port", "list"], "'host:port' has no valid port"),
])
def test_the_issues_cases_are_one_line_without_grpc_logging(args: list[str], needle: str, tmp_path: str) -> None:
    r = podcap(*args)
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1 and lines[0].startswith("podcap"), r.stderr
    assert needle in lines[0], r.stderr


@pytest.mark.parametrize(("text", "address"), [
    ("127.0.0.1", f"127.0.0.1:{DEFAULT_PORT}"), ("collector.example", f"collector.example:{DEFAULT_PORT}"),
    ("h:99", "h:99"), ("::1", f"[::1]:{DEFAULT_PORT}"), ("[::1]", f"[::1]:{DEFAULT_PORT}"), ("[::1]:5", "[::1]:5"),
])
def test_a_collector_without_a_port_is_dialled_on_7420(text: str, address: str) -> None:
    assert collector_address(text) == address


def test_a_collector_without_a_port_is_dialled_on_7420_not_443() -> None:
    r = podcap("--collector", "127.0.0.1", "list")
    assert r.returncode == 1 and f"127.0.0.1:{DEFAULT_PORT}" in r.stderr and ":443" not in r.stderr, r.stderr
