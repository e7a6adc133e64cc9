"""Fixtures of the CLI's unit tests: the fake collector client in place of the real one in every verb."""

from __future__ import annotations

import pytest

from podcap.collector.cli import complete
from podcap.collector.cli.admin import commands as admin_cmds
from podcap.collector.cli.capture import commands as capture_cmds
from podcap.collector.cli.capture import status as read_cmds
from podcap.collector.cli.get import command as get_cmd
from podcap.collector.cli.live import follow as follow_cmd
from tests.unit.collector.cli.fakes import FakeClient


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeClient:
    client = FakeClient()
    for module in (capture_cmds, read_cmds, get_cmd, complete, admin_cmds, follow_cmd):
        monkeypatch.setattr(module, "CollectorClient", client)
    return client
