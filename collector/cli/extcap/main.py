"""``podcap-extcap``: podcap as a capture interface of Wireshark (its extcap interface), one interface ``podcap``.

Wireshark runs this program once per phase (``podcap.collector.cli.extcap.protocol`` describes them): it lists
the interface, its link type, its options (``extcap_options``: lists of namespaces and pods fetched from the
collector, only what the user may capture) and finally runs a capture (``extcap_capture``). ``podcap extcap
install`` puts a wrapper that runs this module into Wireshark's personal extcap folder.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from podcap import __version__
from podcap.collector.cli.extcap.capture import ExtcapCapture, client_for, failure_line, report_failure
from podcap.collector.cli.extcap.options import (
    CollectorSettings,
    ExtcapOptionError,
    add_options,
    capture_options,
    collector_settings,
    config_lines,
)
from podcap.collector.cli.extcap.protocol import (
    DLT_EN10MB,
    dlt_line,
    interfaces_lines,
    phase_of,
    phase_parser,
    print_lines,
)
from podcap.v1 import control_pb2

INTERFACE = "podcap"
DISPLAY = "podcap: Kubernetes pods"
LIST_TIMEOUT_S = 3.0  # tshark asks for the options at every start: a collector that is away must not stall it


def list_capturable(settings: CollectorSettings) -> control_pb2.ListCapturablePodsResponse:
    with client_for(settings, timeout=LIST_TIMEOUT_S) as client:
        return client.capturable_pods()


def main(argv: Sequence[str] | None = None) -> None:
    parser = phase_parser()
    add_options(parser)
    ns, _unknown = parser.parse_known_args(argv)
    phase = phase_of(ns)
    env = dict(os.environ)
    if phase.interfaces:
        print_lines(interfaces_lines(__version__, INTERFACE, DISPLAY))
        return
    if not (phase.dlts or phase.config or phase.capture):
        sys.stderr.write("podcap-extcap is run by Wireshark (install it with 'podcap extcap install'); by hand: "
                         "podcap-extcap --extcap-interfaces | --extcap-interface podcap --extcap-dlts | "
                         "--extcap-config | --capture --fifo PATH [options]\n")
        sys.exit(2)
    if phase.interface != INTERFACE:
        sys.stderr.write(f"podcap: no extcap interface {phase.interface!r} (podcap-extcap has {INTERFACE!r})\n")
        sys.exit(1)
    if phase.dlts:
        print_lines([dlt_line(DLT_EN10MB, "EN10MB", "Ethernet (pcapng: each pod its own interface)")])
    elif phase.config:
        print_lines(config_lines(collector_settings(ns, env), list_capturable, reload_option=phase.reload_option))
    else:
        try:
            opts = capture_options(ns, env)
        except ExtcapOptionError as e:
            sys.exit(report_failure(phase.fifo, failure_line(e)))
        sys.exit(ExtcapCapture(opts, phase.fifo, phase.capture_filter).run())


if __name__ == "__main__":
    main()
