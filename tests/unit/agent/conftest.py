"""Fixtures of the agent session tests: a scripted Ingest servicer on 127.0.0.1 (``collector``) and an agent session
attached to it with fake capture handles (``agent``, ``scripted_ingest.agent_session``), running on a thread until
the test ends.

A module changes the servicer through two fixtures it may override: ``ingest_options`` (gRPC server options, e.g. a
small receive limit) and ``ingest_auto_ack`` (acknowledge every chunk as it arrives)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from podcap.agent.session import AgentSession
from podcap.v1 import ingest_pb2_grpc
from tests.unit.agent.fake_handles import FakeHandles
from tests.unit.agent.scripted_ingest import ScriptedIngest, agent_session


@pytest.fixture
def ingest_options() -> list[tuple[str, int]]:
    """gRPC server options of the scripted servicer (none: gRPC's defaults)."""
    return []


@pytest.fixture
def ingest_auto_ack() -> bool:
    """Whether the scripted servicer acknowledges every chunk itself (no: the test acknowledges)."""
    return False


@pytest.fixture
def collector(ingest_options: list[tuple[str, int]], ingest_auto_ack: bool) -> Iterator[tuple[ScriptedIngest, int]]:
    """The scripted Ingest servicer and its port on 127.0.0.1."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=ingest_options)
    servicer = ScriptedIngest()
    servicer.auto_ack = ingest_auto_ack
    ingest_pb2_grpc.add_IngestServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, port
    server.stop(grace=None)


@pytest.fixture
def agent(collector: tuple[ScriptedIngest, int]) -> Iterator[tuple[AgentSession, FakeHandles]]:
    """An agent session for ``NODE`` (one pod, fake handles) attached to ``collector``; shut down at the end."""
    with agent_session(collector[1]) as running:
        yield running
