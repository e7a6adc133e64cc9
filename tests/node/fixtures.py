"""The session-scoped ``containerd_node`` fixture: one real containerd node shared by every test that asks for it
(the modules that use it name it ``node`` locally; tests/integration/conftest.py's ``node`` is a netns node).

Tests that use it must be marked ``root`` and ``containerd``. Without root or the node's packages the fixture skips
with the reason; with ``PODCAP_REQUIRE_NODE=1`` (set it in the CI job that runs as root) it fails instead, so a
broken CI image cannot turn these tests into silent skips. Teardown runs even when tests fail.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.node.harness import TestNode, missing_requirements

APT_PACKAGES = "containerd runc containernetworking-plugins busybox-static iptables gcc libc6-dev"


@pytest.fixture(scope="session")
def containerd_node() -> Iterator[TestNode]:
    missing = missing_requirements()
    if missing:
        reason = f"a real node needs {', '.join(missing)} (as root: apt-get install {APT_PACKAGES})"
        if os.environ.get("PODCAP_REQUIRE_NODE") == "1":
            pytest.fail(reason + " [PODCAP_REQUIRE_NODE=1]")
        pytest.skip(reason)
    test_node = TestNode()
    try:
        test_node.start()
        yield test_node
    finally:
        test_node.teardown()
