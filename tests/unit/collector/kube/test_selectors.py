"""``podcap.collector.kube.selectors``: label selectors (equality and set-based) and field selectors parse and
match like the API server's, and every bad selector is one ``SelectorError`` (an ``InvalidInputError``: the
control service answers INVALID_ARGUMENT) whose message names the bad part."""

import pytest

from podcap.collector.kube.selectors import SelectorError, parse_field_selector, parse_selector, pod_fields
from podcap.errors import InvalidInputError
from podcap.names import NodeName, PodUid
from podcap.pods import PodRef

LABELS = {"app": "web", "tier": "front", "version": "v2"}


@pytest.mark.parametrize(
    ("selector", "matches"),
    [
        ("", True),
        ("app=web", True),
        ("app==web", True),
        ("app=db", False),
        ("app!=db", True),
        ("app!=web", False),
        ("missing!=x", True),
        ("app in (web,db)", True),
        ("app in (db)", False),
        ("app notin (db, cache)", True),
        ("missing notin (x)", True),
        ("tier", True),
        ("missing", False),
        ("!missing", True),
        ("!app", False),
        ("app=web,tier=front", True),
        ("app=web,tier=back", False),
        ("app in (web), version notin (v1), !canary", True),
        ("example.com/team", False),
    ],
)
def test_matching(selector: str, matches: bool) -> None:
    assert parse_selector(selector).matches(LABELS) is matches


@pytest.mark.parametrize(
    "selector",
    ["app=", "=web", "app in web", "app in ()", "app in (web", "app=web,", "app ~ web", "-bad=x", "app=web!", "!"],
)
def test_bad_selectors_raise(selector: str) -> None:
    if selector == "app=":
        # "key=" selects an empty value, as in Kubernetes.
        assert parse_selector(selector).matches({"app": ""})
        return
    with pytest.raises(SelectorError):
        parse_selector(selector)


@pytest.mark.parametrize(("text", "fields", "matches"), [
    ("metadata.name=a\\,b", {"metadata.name": "a,b"}, True),
    ("metadata.name=a\\=b", {"metadata.name": "a=b"}, True),
    ("  spec.nodeName = n1 ", {"spec.nodeName": "n1"}, True),
    ("spec.nodeName=", {"spec.nodeName": ""}, True),
    ("spec.nodeName!=", {"spec.nodeName": "n1"}, True),
])
def test_field_selector_grammar(text: str, fields: dict[str, str], matches: bool) -> None:
    assert parse_field_selector(text).matches(fields) is matches


@pytest.mark.parametrize(("text", "message"), [
    ("spec.bogus=1", "field 'spec.bogus' is not supported; use one of metadata.name"),
    ("spec.nodeName", "is not field=value"),
    ("spec.nodeName=a,", "empty requirement"),
    ("metadata.name=a,b", "is not field=value"),
    ("metadata.name=a=b", "unescaped '='"),
    ("spec.hostNetwork=yes", "'true' or 'false'"),
])
def test_field_selector_errors_name_the_bad_part(text: str, message: str) -> None:
    with pytest.raises(SelectorError, match=message):
        parse_field_selector(text)
    assert issubclass(SelectorError, InvalidInputError)  # the control service answers INVALID_ARGUMENT


@pytest.mark.parametrize(("text", "empty"), [("", True), ("  ", True), ("app=web", False)])
def test_empty_selectors_match_everything_and_are_false(text: str, empty: bool) -> None:
    for sel in (parse_selector(text), parse_field_selector(text.replace("app", "metadata.name"))):
        assert bool(sel) is not empty
        if empty:
            assert sel.matches({}) and str(sel) == ""


def test_agent_inventory_pods_match_field_selectors_too() -> None:
    pod = PodRef("prod", "web", PodUid("u1"), NodeName("node-1"), {"app": "web"}, "10.0.0.1")
    assert parse_field_selector("spec.nodeName=node-1,status.phase=Running").matches(pod_fields(pod))
    assert not parse_field_selector("metadata.namespace!=prod").matches(pod_fields(pod))
