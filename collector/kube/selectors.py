"""Kubernetes label selectors: parsing and matching, the full syntax.

Equality-based (``a=b``, ``a==b``, ``a!=b``) and set-based (``a in (x,y)``, ``a notin (x)``, ``a``, ``!a``)
requirements, comma-separated and ANDed, with the same semantics as ``k8s.io/apimachinery/pkg/labels``:
``a!=b`` and ``a notin (...)`` also match objects that lack the key. The collector uses this to resolve targets
from agents' inventories when there is no API server, so the same selector means the same pods either way.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_TOKEN = re.compile(r"\s*(\(|\)|,|!=|==|=|!|[^\s(),!=]+)")


class SelectorError(ValueError):
    """The selector does not parse; the message points at the offending part."""


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "in", "notin", "exists", "!exists"
    values: frozenset[str]

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.op == "exists":
            return self.key in labels
        if self.op == "!exists":
            return self.key not in labels
        if self.op == "in":
            return self.key in labels and labels[self.key] in self.values
        return self.key not in labels or labels[self.key] not in self.values


@dataclass(frozen=True)
class Selector:
    """An AND of requirements. The empty selector matches everything."""

    requirements: tuple[Requirement, ...]
    text: str

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    def __str__(self) -> str:
        return self.text


def _check_key(key: str, text: str) -> str:
    if len(key) > 317 or not _KEY.match(key):
        raise SelectorError(f"invalid label key {key!r} in selector {text!r}")
    return key


def _check_value(value: str, text: str) -> str:
    if len(value) > 63 or not _VALUE.match(value):
        raise SelectorError(f"invalid label value {value!r} in selector {text!r}")
    return value


def parse_selector(text: str) -> Selector:
    """Parse a label selector; raise SelectorError with a message that names the bad part."""
    if len(text) > 4096:
        raise SelectorError("label selector longer than 4096 bytes")
    tokens: list[str] = []
    pos = 0
    stripped = text.strip()
    while pos < len(stripped):
        m = _TOKEN.match(stripped, pos)
        if not m:
            raise SelectorError(f"cannot parse selector {text!r} at position {pos}")
        tokens.append(m.group(1))
        pos = m.end()
    reqs: list[Requirement] = []
    i = 0

    def expect_end_of_requirement() -> None:
        nonlocal i
        if i < len(tokens):
            if tokens[i] != ",":
                raise SelectorError(f"expected ',' in selector {text!r}, found {tokens[i]!r}")
            i += 1
            if i == len(tokens):
                raise SelectorError(f"selector {text!r} ends with ','")

    while i < len(tokens):
        tok = tokens[i]
        if tok == "!":
            if i + 1 >= len(tokens):
                raise SelectorError(f"'!' without a key in selector {text!r}")
            reqs.append(Requirement(_check_key(tokens[i + 1], text), "!exists", frozenset()))
            i += 2
            expect_end_of_requirement()
            continue
        if tok in {"(", ")", ",", "=", "==", "!="}:
            raise SelectorError(f"unexpected {tok!r} in selector {text!r}")
        key = _check_key(tok, text)
        i += 1
        if i >= len(tokens) or tokens[i] == ",":
            reqs.append(Requirement(key, "exists", frozenset()))
            expect_end_of_requirement()
            continue
        op = tokens[i]
        i += 1
        if op in {"=", "==", "!="}:
            value = tokens[i] if i < len(tokens) and tokens[i] not in {",", "(", ")"} else ""
            if value:
                i += 1
            reqs.append(Requirement(key, "in" if op != "!=" else "notin", frozenset({_check_value(value, text)})))
        elif op in {"in", "notin"}:
            if i >= len(tokens) or tokens[i] != "(":
                raise SelectorError(f"expected '(' after {op!r} in selector {text!r}")
            i += 1
            values: set[str] = set()
            while True:
                if i >= len(tokens):
                    raise SelectorError(f"missing ')' in selector {text!r}")
                if tokens[i] == ")":
                    i += 1
                    break
                if tokens[i] == ",":
                    i += 1
                    continue
                values.add(_check_value(tokens[i], text))
                i += 1
            if not values:
                raise SelectorError(f"empty value set after {op!r} in selector {text!r}")
            reqs.append(Requirement(key, op, frozenset(values)))
        else:
            raise SelectorError(f"unknown operator {op!r} after key {key!r} in selector {text!r}")
        expect_end_of_requirement()
    return Selector(tuple(reqs), text.strip())
