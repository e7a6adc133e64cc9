"""User text is shown as typed (issue 26, items 1 and 10): a filter, a note, a selector, an end reason or an error
full of rich markup (``[tcpflags]``, ``[bold]``, ``:smile:``) reaches every table and message verbatim; off a
terminal tables are full width (never squeezed to 80 columns, titles never wrapped) and no line ends in padding."""

from __future__ import annotations

import pytest

from podcap.v1 import control_pb2
from tests.unit.collector.cli.fakes import CID, FakeClient, capture, invoke

FILTER = "tcp[tcpflags] & tcp-syn != 0"
NOTE = "[bold]why[/bold] :smile: [red]"
REASON = "stopped by [b]user[/b] :thumbs_up:"
MESSAGE = "interface [veth0] gone :x:"
SELECTOR = "app in [web]"


def marked_up(state: control_pb2.CaptureState.ValueType = control_pb2.CAPTURE_STATE_DONE) -> control_pb2.CaptureStatus:
    st = capture(state)
    st.settings.filter = FILTER
    st.note = NOTE
    st.end_reason = REASON
    st.target.selector = SELECTOR
    st.pods[0].message = MESSAGE
    return st


def no_padding(text: str) -> None:
    for line in text.splitlines():
        assert line == line.rstrip(), f"padded line: {line!r}"


@pytest.fixture
def marked(fake: FakeClient) -> FakeClient:
    fake.get = fake.stop = lambda cid: marked_up()
    fake.start = lambda req: marked_up(control_pb2.CAPTURE_STATE_RUNNING)
    fake.list_captures = lambda: [marked_up()]
    fake.audit_records = [control_pb2.AuditRecord(unix_ns=1_700_000_000 * 10**9, user="[u]ser", action="start",
                                                  capture_id=CID, target=f"ns=shop selector={SELECTOR}",
                                                  filter=FILTER, result="failed", detail=f"invalid filter {FILTER!r}")]
    return fake


def test_list_shows_the_filter_and_selector_as_typed(marked: FakeClient) -> None:
    r = invoke("list")
    assert r.exit_code == 0, r.output
    assert FILTER in r.output and SELECTOR in r.output
    no_padding(r.output)


def test_audit_shows_every_field_as_typed(marked: FakeClient) -> None:
    r = invoke("audit")
    assert r.exit_code == 0, r.output
    for text in (FILTER, SELECTOR, "[u]ser", f"invalid filter {FILTER!r}"):
        assert text in r.output, text
    no_padding(r.output)


@pytest.mark.parametrize("command", [["status", CID], ["stop", CID]])
def test_status_and_stop_tables_show_reasons_and_messages_as_typed(marked: FakeClient, command: list[str]) -> None:
    r = invoke(*command)
    assert r.exit_code == 0, r.output
    assert REASON in r.output and MESSAGE in r.output
    no_padding(r.output)


def test_start_wait_table_off_a_terminal_is_full_width_and_as_typed(marked: FakeClient) -> None:
    long_name = "a-pod-with-a-rather-long-name-" + "x" * 60
    done = marked_up()
    done.pods[1].pod.name = long_name
    done.pods[1].message = "m" * 150
    marked.get = lambda cid: done
    r = invoke("start", "-n", "shop", "--filter", FILTER, "--note", NOTE, "--wait")
    assert r.exit_code == 0, r.output
    assert f"shop/{long_name}" in r.stderr and "m" * 150 in r.stderr  # not cut to 80 columns ("shop/…")
    assert REASON in r.stderr and MESSAGE in r.stderr
    title = next(line for line in r.stderr.splitlines() if line.startswith(f"capture {CID}"))
    assert title.endswith(" B") or "packets" in title  # the title is one line, not wrapped at the table's width
    no_padding(r.stderr)


def test_status_watch_off_a_terminal_prints_unpadded_tables(marked: FakeClient) -> None:
    states = iter([marked_up(control_pb2.CAPTURE_STATE_RUNNING), marked_up()])
    marked.get = lambda cid: next(states)
    r = invoke("status", CID, "--watch", "--interval", "0")
    assert r.exit_code == 0 and r.output.count(f"capture {CID}") == 2
    assert REASON in r.output
    no_padding(r.output)

