"""BPF filters: one compile for the capture's check and the windowed download, one error with libpcap's message."""

import pytest

from podcap.collector.filters import MAX_FILTER_LEN, FilterError, check_filter, compile_filter
from podcap.formats.pcap import LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL2, FileFormat
from podcap.v1 import common_pb2

ETH = FileFormat(LINKTYPE_ETHERNET, 262144, nanosecond=True)
UDP_FRAME = bytes.fromhex("ffffffffffff02000000000108004500001c0000000040110000" "0a0000010a000002" "0035003500080000")


def test_empty_filter_compiles_to_nothing() -> None:
    assert compile_filter("  ", ETH) is None
    assert check_filter(" ") == ""


def test_compiled_filter_matches_packets() -> None:
    prog = compile_filter("udp port 53", ETH)
    assert prog is not None and prog.filter(UDP_FRAME) > 0
    tcp = compile_filter("tcp", ETH)
    assert tcp is not None and tcp.filter(UDP_FRAME) == 0


@pytest.mark.parametrize("call", [lambda e: compile_filter(e, ETH), check_filter], ids=["compile", "check"])
def test_a_typo_is_one_filter_error_with_libpcaps_message(call: object) -> None:
    with pytest.raises(FilterError, match=r"^invalid filter 'tcp prot 80': .*syntax error"):
        call("tcp prot 80")  # type: ignore[operator]


@pytest.mark.parametrize("expr,message", [("x" * (MAX_FILTER_LEN + 1), "longer than"), ("tcp\0", "NUL")])
def test_check_rejects_what_no_agent_should_see(expr: str, message: str) -> None:
    with pytest.raises(FilterError, match=message):
        check_filter(expr)


def test_check_compiles_for_the_capture_interfaces_link_type() -> None:
    # "ether host" has no meaning on Linux cooked captures (all interfaces of a pod).
    assert check_filter("ether host 02:00:00:00:00:01") == "ether host 02:00:00:00:00:01"
    with pytest.raises(FilterError):
        check_filter("ether host 02:00:00:00:00:01", interface=common_pb2.CAPTURE_INTERFACE_POD_ALL)
    assert compile_filter("ip", FileFormat(LINKTYPE_LINUX_SLL2, 65535, nanosecond=False)) is not None
