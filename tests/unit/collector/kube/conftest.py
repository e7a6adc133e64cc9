"""Fixtures shared by the tests of ``podcap.collector.kube``: a ``KubeApi`` on the module's ``standin`` fixture
(each test module fills its own stand-in API server with the pods it needs)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from podcap.collector.kube.client import KubeApi
from tests.kubeapi.helpers import api_for
from tests.kubeapi.standin import KubeApiStandin


@pytest.fixture
def api(standin: KubeApiStandin, tmp_path: Any) -> Iterator[KubeApi]:
    a = api_for(standin, str(tmp_path))
    yield a
    a.close()
