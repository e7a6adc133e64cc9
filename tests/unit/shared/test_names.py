"""Names from outside become paths: only valid Kubernetes names pass, so nothing escapes the data dir."""

import pytest

from podcap.names import (
    InvalidNameError,
    check_capture_id,
    check_namespace,
    check_pod_name,
    check_pod_uid,
    new_capture_id,
)


@pytest.mark.parametrize("name", ["..", "../etc", "a/b", "", "A", "-a", "a-", "a" * 64, "a\x00b", "a.b"])
def test_bad_namespaces(name: str) -> None:
    with pytest.raises(InvalidNameError):
        check_namespace(name)


@pytest.mark.parametrize("name", ["..", "../x", "x/..", "x/y", "", ".x", "x.", "UPPER", "a" * 254])
def test_bad_pod_names(name: str) -> None:
    with pytest.raises(InvalidNameError):
        check_pod_name(name)


@pytest.mark.parametrize("name", ["web", "web-0", "a.b.c", "x1"])
def test_good_pod_names(name: str) -> None:
    assert check_pod_name(name) == name


@pytest.mark.parametrize("uid", ["../x", "a/b", "", "..", "x" * 80])
def test_bad_uids(uid: str) -> None:
    with pytest.raises(InvalidNameError):
        check_pod_uid(uid)


def test_capture_ids_are_valid_and_distinct() -> None:
    ids = {new_capture_id() for _ in range(200)}
    assert len(ids) == 200
    for i in ids:
        assert check_capture_id(i) == i and len(i) == 12 and i[0].isalpha()
    with pytest.raises(InvalidNameError):
        check_capture_id("../../etc")
