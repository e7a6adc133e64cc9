"""`podcap status` never claims completeness it has not verified: "all N packets ... are stored" only once the
capture ended with every pod final and nothing unaccounted; otherwise it says what is estimated, by node. While a
capture runs it shows what agents hold and which agents are away. User text is escaped, never rich markup."""

from __future__ import annotations

import io

from rich.console import Console

from podcap.collector.cli.render import accounting_caption, capture_table
from podcap.v1 import common_pb2, control_pb2

DONE = control_pb2.CAPTURE_STATE_DONE
RUNNING = control_pb2.CAPTURE_STATE_RUNNING


def pod(name: str, node: str = "node-1", *, received: int = 10, packets: int = 10, final: bool = True,
        agent: str = "connected", held: tuple[int, int, int] = (0, 0, 0), lost_with_agent: int = 0,
        message: str = "") -> control_pb2.PodStatus:
    return control_pb2.PodStatus(
        pod=common_pb2.Pod(namespace="bk", name=name, uid=f"uid-{name}", node=node),
        state=common_pb2.POD_CAPTURE_STATE_DONE, packets=packets, kernel=common_pb2.KernelStats(received=received),
        drops=common_pb2.PodcapDrops(lost_with_agent=lost_with_agent), final=final, agent=agent,
        held=common_pb2.HeldData(chunks=held[0], bytes=held[1], packets=held[2]), message=message)


def status(state: control_pb2.CaptureState.ValueType, *pods: control_pb2.PodStatus) -> control_pb2.CaptureStatus:
    return control_pb2.CaptureStatus(id="c1", state=state, pods=list(pods), created_unix_ns=1, ended_unix_ns=2)


def rendered(st: control_pb2.CaptureStatus) -> str:
    out = io.StringIO()
    Console(file=out, width=400, soft_wrap=False).print(capture_table(st))
    return out.getvalue()


def test_everything_verified_says_so() -> None:
    assert accounting_caption(status(DONE, pod("a"), pod("b", received=12, packets=12))) == (
        "all 22 packets the kernel delivered are stored, deleted by retention or counted as dropped")


def test_issue_21_pods_without_final_counters_are_estimates_not_all_accounted() -> None:
    """After the stop, nothing had arrived from the node: not 'all 0 packets ... are stored'."""
    text = accounting_caption(status(DONE, pod("bulk-0", "node-x", received=0, packets=0, final=False),
                                     pod("bulk-1", "node-x", received=0, packets=0, final=False)))
    assert text == ("2 pod(s) on node node-x never sent their final counters: their losses after the last report "
                    "(lost with the agent: 0) are estimates")
    assert "all 0 packets" not in text


def test_part_verified_says_which_part() -> None:
    text = accounting_caption(status(DONE, pod("a"), pod("b", "node-2", received=38005, packets=5, final=False,
                                                         lost_with_agent=38000)))
    assert text.splitlines() == [
        "1 pod(s) on node node-2 never sent their final counters: their losses after the last report (lost with "
        "the agent: 38000) are estimates",
        "the other 1 pod(s): all 10 packets the kernel delivered are stored, deleted by retention or counted as "
        "dropped"]


def test_unaccounted_packets_of_final_pods_are_a_defect() -> None:
    odd = pod("a")
    odd.unaccounted = 3
    assert accounting_caption(status(DONE, odd)).startswith("3 packet(s) of 1 pod(s) are neither stored nor counted")


def test_a_running_capture_shows_held_data_and_away_agents() -> None:
    st = status(RUNNING, pod("bulk-0", "node-x", final=False, held=(9, 55 << 20, 38000),
                             agent="disconnected 42s ago: the call was cancelled"),
                pod("web-0", "node-1", final=False))
    text = accounting_caption(st)
    assert "held by agents, not stored yet (on its way: neither stored nor lost): 9 chunks, 55.0 MiB, 38k packets" \
        in text
    assert "agent of node node-x: disconnected 42s ago: the call was cancelled" in text and "node-1" not in text
    table = rendered(st)
    assert "held by agent: 9 chunks, 55.0 MiB, 38k packets" in table
    assert "agent disconnected 42s ago: the call was cancelled" in table
    assert "packets the kernel delivered" not in table


def test_user_text_is_escaped() -> None:
    st = status(RUNNING, pod("a", message="[bold red]boom[/bold red]", agent="disconnected 1s ago: [x] broke"))
    table = rendered(st)
    assert "[bold red]boom[/bold red]" in table and "[x] broke" in table
