"""Kubernetes label and field selectors: parsing and matching, with the API server's syntax and semantics.

Both kinds are the same thing to a matcher: an AND of requirements on a string-to-string mapping (a pod's labels,
or its selectable fields from ``pod_fields``), so both parse into one ``Selector`` of ``Requirement``; only the
grammars differ, as they do in ``k8s.io/apimachinery`` (``labels`` and ``fields``):

- **label selectors** (``parse_selector``): equality-based (``a=b``, ``a==b``, ``a!=b``) and set-based
  (``a in (x,y)``, ``a notin (x)``, ``a``, ``!a``) requirements, comma-separated; ``a!=b`` and ``a notin (...)``
  also match objects that lack the key. The collector resolves targets from agents' inventories with these when
  there is no API server, so the same selector means the same pods either way.
- **field selectors** (``parse_field_selector``): ``field=value``, ``field==value``, ``field!=value`` joined by
  ``,``, with ``\\`` escapes, on the pod fields podcap can judge (``POD_FIELDS``). A selector copied from
  ``kubectl`` works. They are applied locally, to the watched cache (``inventory.py`` says why); a field set from
  ``pod_fields`` always has every field, so "lacks the key" never arises and ``!=`` means what it means to the
  API server.

Pure: no imports from the collector, so the CLI, the stand-in API server and the target resolution can use it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from podcap.errors import InvalidInputError

MAX_SELECTOR_LEN = 4096

POD_FIELDS = ("metadata.name", "metadata.namespace", "spec.nodeName", "status.phase", "spec.hostNetwork",
              "status.podIP")


class SelectorError(InvalidInputError):
    """A label or field selector does not parse, or names a field podcap cannot select on; the message points at
    the offending part."""


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
    """An AND of requirements. The empty selector matches everything (and is false)."""

    requirements: tuple[Requirement, ...]
    text: str

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    def __str__(self) -> str:
        return self.text

    def __bool__(self) -> bool:
        return bool(self.requirements)


def _equality(key: str, op: str, value: str) -> Requirement:
    return Requirement(key, "notin" if op == "!=" else "in", frozenset({value}))


def _check_length(text: str, kind: str) -> None:
    if len(text) > MAX_SELECTOR_LEN:
        raise SelectorError(f"{kind} selector longer than {MAX_SELECTOR_LEN} bytes")


# ---- label selectors ----

_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_TOKEN = re.compile(r"\s*(\(|\)|,|!=|==|=|!|[^\s(),!=]+)")


def _check(pattern: re.Pattern[str], max_len: int, what: str, s: str, text: str) -> str:
    if len(s) > max_len or not pattern.match(s):
        raise SelectorError(f"invalid label {what} {s!r} in selector {text!r}")
    return s


def _check_key(key: str, text: str) -> str:
    return _check(_KEY, 317, "key", key, text)


def _check_value(value: str, text: str) -> str:
    return _check(_VALUE, 63, "value", value, text)


def parse_selector(text: str) -> Selector:
    """Parse a label selector; raise SelectorError with a message that names the bad part."""
    _check_length(text, "label")
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
            reqs.append(_equality(key, op, _check_value(value, text)))
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
    return Selector(tuple(reqs), stripped)


# ---- field selectors ----

_ESCAPES = {"\\": "\\", ",": ",", "=": "=", "!": "!"}


def _split_unescaped(text: str, sep: str) -> list[str]:
    parts, cur, i = [], "", 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            cur += text[i:i + 2]
            i += 2
        elif text[i] == sep:
            parts.append(cur)
            cur = ""
            i += 1
        else:
            cur += text[i]
            i += 1
    parts.append(cur)
    return parts


def _find_op(term: str) -> tuple[int, str]:
    i = 0
    while i < len(term):
        if term[i] == "\\":
            i += 2
            continue
        for op in ("!=", "==", "="):
            if term.startswith(op, i):
                return i, op
        i += 1
    return -1, ""


def _unescape(value: str, text: str) -> str:
    out, i = "", 0
    while i < len(value):
        c = value[i]
        if c == "\\":
            if i + 1 >= len(value) or value[i + 1] not in _ESCAPES:
                raise SelectorError(f"invalid escape in field selector {text!r}")
            out += value[i + 1]
            i += 2
            continue
        if c in ",=!":
            raise SelectorError(f"unescaped {c!r} in value {value!r} of field selector {text!r}")
        out += c
        i += 1
    return out


def parse_field_selector(text: str) -> Selector:
    """Parse ``field=value,field!=value`` (the API server's grammar) over ``POD_FIELDS``; raise SelectorError
    naming the bad part."""
    _check_length(text, "field")
    stripped = text.strip()
    reqs: list[Requirement] = []
    if not stripped:
        return Selector((), "")
    for term in _split_unescaped(stripped, ","):
        if not term.strip():
            raise SelectorError(f"empty requirement in field selector {text!r}")
        pos, op = _find_op(term)
        if pos < 0:
            raise SelectorError(f"invalid field selector {text!r}: {term!r} is not field=value, field==value "
                                "or field!=value")
        name = term[:pos].strip()
        if name not in POD_FIELDS:
            raise SelectorError(f"field selector {text!r}: field {name!r} is not supported; use one of "
                                f"{', '.join(POD_FIELDS)}")
        value = _unescape(term[pos + len(op):].strip(), text)
        if name == "spec.hostNetwork" and value not in ("true", "false"):
            raise SelectorError(f"field selector {text!r}: spec.hostNetwork is 'true' or 'false'")
        reqs.append(_equality(name, op, value))
    return Selector(tuple(reqs), stripped)


class _PodFields(Protocol):
    """What ``pod_fields`` reads of a pod (a ``PodRef``), without importing the collector's types."""

    @property
    def name(self) -> str: ...
    @property
    def namespace(self) -> str: ...
    @property
    def node(self) -> str: ...
    @property
    def ip(self) -> str: ...
    @property
    def host_network(self) -> bool: ...


def pod_fields(pod: _PodFields, phase: str = "Running") -> dict[str, str]:
    """A pod's selectable fields. Pods from agents' inventories have a ready sandbox: phase Running."""
    return {"metadata.name": pod.name, "metadata.namespace": pod.namespace, "spec.nodeName": pod.node,
            "status.phase": phase, "spec.hostNetwork": "true" if pod.host_network else "false",
            "status.podIP": pod.ip}
