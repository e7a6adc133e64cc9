"""The session-scoped ``s3`` fixture: one real Ceph RADOS Gateway (``tests.s3.testbed``) shared by the tests that
ask for it, started on first use and torn down at the end of the session, also when tests fail.

Without root or Ceph's packages it skips with the reason; with ``PODCAP_REQUIRE_NODE=1`` (CI) it fails instead. Each
test gets its own key prefix (``s3_prefix``), so tests sharing the bucket never see each other's objects.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from tests.s3.testbed import PACKAGES, Testbed, missing_packages


@pytest.fixture(scope="session")
def s3() -> Iterator[Testbed]:
    missing = missing_packages()
    reason = ""
    if os.geteuid() != 0:
        reason = "the S3 testbed runs Ceph daemons as root"
    elif missing:
        reason = f"the S3 testbed needs {', '.join(missing)} (as root: apt-get install {' '.join(PACKAGES)})"
    if reason:
        if os.environ.get("PODCAP_REQUIRE_NODE") == "1":
            pytest.fail(reason + " [PODCAP_REQUIRE_NODE=1]")
        pytest.skip(reason)
    testbed = Testbed(f"/tmp/pcs3-{uuid.uuid4().hex[:8]}")
    try:
        yield testbed.start()
    finally:
        testbed.stop()


@pytest.fixture
def s3_prefix() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"
