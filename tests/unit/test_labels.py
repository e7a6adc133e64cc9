"""Label selectors: the Kubernetes syntax (equality and set-based) parses and matches like the API server's."""

import pytest

from podcap.collector.kube.selectors import SelectorError, parse_selector

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
