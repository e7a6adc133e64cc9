"""Fixtures of the CLI's unit tests: the fake collector client in place of the real one in every verb."""

from __future__ import annotations

import pytest

from podcap.collector.cli import admin_cmds, capture_cmds, complete, follow_cmd, get_cmd, read_cmds
from tests.unit.collector.cli.fakes import FakeClient


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeClient:
    client = FakeClient()
    for module in (capture_cmds, read_cmds, get_cmd, complete, admin_cmds, follow_cmd):
        monkeypatch.setattr(module, "CollectorClient", client)
    return client
