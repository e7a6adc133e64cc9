"""Wireshark's extcap interface, the text half: the lines an extcap prints and the arguments Wireshark passes.

Wireshark (and tshark, through dumpcap) runs an extcap program in phases, each a separate process:

- ``--extcap-interfaces [--extcap-version=X]``: ``extcap {version=..}`` and one ``interface {value=..}{display=..}``
  per interface. Called at every start of Wireshark and of ``tshark -D``/``-i``, so it never touches the network.
- ``--extcap-interface IF --extcap-dlts``: one ``dlt {number=..}{name=..}{display=..}``.
- ``--extcap-interface IF --extcap-config``: ``arg {number=..}{call=--x}{display=..}{type=..}...`` per option and
  ``value {arg=..}{value=..}{display=..}`` per choice of a selector or multicheck (``{parent=..}`` nests a
  multicheck's values in a tree). With ``--extcap-reload-option NAME`` only NAME's ``value`` lines, for the
  reload button of a selector with ``{reload=true}``. tshark calls it too (twice per capture, and for ``-D``), so
  it must answer quickly whatever the network does.
- ``--extcap-interface IF --capture --fifo PATH [--extcap-capture-filter EXPR] [options]``: write pcap or pcapng
  to PATH until SIGTERM. Options come as ``--call VALUE`` (a ``boolflag`` as a bare ``--call`` when true; a
  multicheck's choices joined with commas). tshark sets them with ``-o extcap.IF.NAME:VALUE`` where NAME is the
  call without its dashes (``--keep-stored`` is ``keepstored``).

Errors reach Wireshark's dialog (tshark: "Error by extcap pipe: ...") through stderr and a non-zero exit — but
only after the extcap has opened the fifo: dumpcap waits for that open, so an extcap that fails before it leaves
Wireshark hanging (measured with tshark 4.0.17). ``podcap.collector.cli.extcap.capture`` owns that rule.

Wireshark's parser splits on braces and has no escaping, so every text printed here has ``{``/``}`` and line
breaks replaced.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

DLT_EN10MB = 1


def clean(text: str) -> str:
    """``text`` as one brace-free line (Wireshark's extcap parser has no escaping)."""
    return " ".join(text.replace("{", "(").replace("}", ")").split())


def _fields(pairs: Iterable[tuple[str, str | int | bool | None]]) -> str:
    out = []
    for key, value in pairs:
        if value is None or value is False:
            continue
        out.append(f"{{{key}={'true' if value is True else clean(str(value))}}}")
    return "".join(out)


@dataclass(frozen=True)
class ExtcapArg:
    """One option of the configuration dialog (``arg`` line)."""

    number: int
    call: str
    display: str
    type: str  # string, password, unsigned, boolflag, selector, multicheck, fileselect, ...
    tooltip: str = ""
    default: str | None = None
    group: str = ""
    required: bool = False
    range: str | None = None  # "min,max" for numbers
    reload: bool = False  # a selector whose values can be fetched again (--extcap-reload-option)
    placeholder: str = ""
    mustexist: bool = False  # fileselect: the file must exist

    def line(self) -> str:
        return "arg " + _fields([
            ("number", self.number), ("call", self.call), ("display", self.display), ("type", self.type),
            ("tooltip", self.tooltip or None), ("default", self.default), ("range", self.range),
            ("required", self.required), ("reload", self.reload), ("placeholder", self.placeholder or None),
            ("mustexist", self.mustexist), ("group", self.group or None),
        ])

    @property
    def name(self) -> str:
        """The option's name in tshark's ``-o extcap.IF.NAME:VALUE`` and in ``--extcap-reload-option``."""
        return self.call.lstrip("-").replace("-", "")


@dataclass(frozen=True)
class ExtcapValue:
    """One choice of a selector or multicheck (``value`` line)."""

    arg: int
    value: str
    display: str
    default: bool = False
    parent: str = ""  # multicheck: the value of the node this one sits under
    enabled: bool = True  # multicheck: False = shown but cannot be checked (a heading, a message)

    def line(self) -> str:
        return "value " + _fields([
            ("arg", self.arg), ("value", self.value), ("display", self.display), ("default", self.default),
            ("parent", self.parent or None), ("enabled", None if self.enabled else "false"),
        ])


def interfaces_lines(version: str, interface: str, display: str) -> list[str]:
    return [f"extcap {_fields([('version', version)])}",
            f"interface {_fields([('value', interface), ('display', display)])}"]


def dlt_line(number: int, name: str, display: str) -> str:
    return "dlt " + _fields([("number", number), ("name", name), ("display", display)])


@dataclass(frozen=True)
class Phase:
    """What Wireshark asked for, and the interface-independent arguments of the extcap interface."""

    interfaces: bool
    dlts: bool
    config: bool
    capture: bool
    interface: str
    fifo: str
    capture_filter: str
    reload_option: str
    version: str


def phase_parser() -> argparse.ArgumentParser:
    """The extcap interface's own arguments; callers add their options and parse with ``parse_known_args`` so an
    argument of a newer Wireshark (``--extcap-control-in``, say) does not break an older podcap."""
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    p.add_argument("--extcap-interfaces", action="store_true")
    p.add_argument("--extcap-version", default="")
    p.add_argument("--extcap-dlts", action="store_true")
    p.add_argument("--extcap-config", action="store_true")
    p.add_argument("--extcap-interface", default="")
    p.add_argument("--extcap-reload-option", default="")
    p.add_argument("--capture", action="store_true")
    p.add_argument("--fifo", default="")
    p.add_argument("--extcap-capture-filter", default="")
    return p


def phase_of(ns: argparse.Namespace) -> Phase:
    return Phase(interfaces=ns.extcap_interfaces, dlts=ns.extcap_dlts, config=ns.extcap_config,
                 capture=ns.capture, interface=ns.extcap_interface, fifo=ns.fifo,
                 capture_filter=ns.extcap_capture_filter, reload_option=ns.extcap_reload_option,
                 version=ns.extcap_version)


def multicheck_values(raw: str) -> list[str]:
    """A multicheck option's choices as Wireshark passes them (comma-separated)."""
    return [v.strip() for v in raw.split(",") if v.strip()]


def print_lines(lines: Sequence[str]) -> None:
    print("\n".join(lines), flush=True)
