"""The PATCH bodies the API server accepts, applied as it applies them: JSON merge patch (RFC 7386), JSON patch
(RFC 6902) and a strategic merge patch approximation.

``kubectl apply``/``patch``/``annotate``/``label`` and the official client send these. Strategic merge patch is
what kubectl sends for built-in kinds: here it is a merge patch whose ``$``-directives (``$setElementOrder``,
``$retainKeys``, ``$patch``) are dropped and whose lists of objects with a ``name`` key are merged by that key, as
the built-in schemas' ``patchMergeKey: name`` lists are (containers, ports, env). Other lists are replaced, as they
are for most keys; the stand-in does not know every kind's patch strategy.
"""

from __future__ import annotations

import copy
from typing import Any


class PatchError(Exception):
    """A patch that cannot be applied (answered 422 for JSON patch tests, 400 for malformed bodies)."""


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, ``null`` deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        if isinstance(patch, list) and isinstance(target, list) and patch and all(
                isinstance(x, dict) and "name" in x for x in patch + target):
            merged = {x["name"]: x for x in target}
            order = [x["name"] for x in target]
            for x in patch:
                if x.get("$patch") == "delete":
                    merged.pop(x["name"], None)
                    continue
                if x["name"] not in merged:
                    order.append(x["name"])
                merged[x["name"]] = strategic_merge_patch(merged.get(x["name"]), x)
            return [merged[n] for n in order if n in merged]
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if k.startswith("$"):
            continue
        if v is None:
            out.pop(k, None)
        else:
            out[k] = strategic_merge_patch(out.get(k), v)
    return out


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, parts: list[str]) -> tuple[Any, str]:
    return _walk(doc, parts[:-1], "/".join(parts)), parts[-1]


def _get(doc: Any, parts: list[str]) -> Any:
    return _walk(doc, parts, "/" + "/".join(parts))


def _walk(doc: Any, parts: list[str], path: str) -> Any:
    """What ``parts`` point at in ``doc``; ``path`` is the one the error names, as the API server does."""
    cur = doc
    for p in parts:
        if isinstance(cur, list):
            try:
                cur = cur[int(p)]
            except (ValueError, IndexError) as e:
                raise PatchError(f"path element {p!r} not found") from e
        elif isinstance(cur, dict) and p in cur:
            cur = cur[p]
        else:
            raise PatchError(f"doc is missing path: {path}")
    return cur


def _remove(doc: Any, parts: list[str]) -> Any:
    parent, last = _parent(doc, parts)
    if isinstance(parent, list):
        try:
            return parent.pop(int(last))
        except (ValueError, IndexError) as e:
            raise PatchError(f"index {last!r} out of range") from e
    if not isinstance(parent, dict) or last not in parent:
        raise PatchError(f"unable to remove nonexistent key: {last}: missing value")
    return parent.pop(last)


def _add(doc: Any, parts: list[str], value: Any, *, replace: bool = False) -> Any:
    if not parts:
        return copy.deepcopy(value)
    parent, last = _parent(doc, parts)
    if isinstance(parent, list):
        if last == "-":
            parent.append(copy.deepcopy(value))
            return doc
        try:
            i = int(last)
        except ValueError as e:
            raise PatchError(f"invalid index {last!r}") from e
        if i < 0 or i > len(parent) or (replace and i == len(parent)):
            raise PatchError(f"index {i} out of range")
        if replace:
            parent[i] = copy.deepcopy(value)
        else:
            parent.insert(i, copy.deepcopy(value))
        return doc
    if not isinstance(parent, dict):
        raise PatchError(f"doc is missing path: /{'/'.join(parts)}")
    if replace and last not in parent:
        raise PatchError(f"replace operation does not apply: doc is missing key: /{'/'.join(parts)}: missing value")
    parent[last] = copy.deepcopy(value)
    return doc


def json_patch(target: Any, ops: Any) -> Any:
    """RFC 6902: add, remove, replace, move, copy, test."""
    if not isinstance(ops, list):
        raise PatchError("a JSON patch is a list of operations")
    doc = copy.deepcopy(target)
    for op in ops:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise PatchError(f"invalid operation {op!r}")
        kind, parts = op["op"], _pointer(op["path"])
        if kind == "add":
            doc = _add(doc, parts, op.get("value"))
        elif kind == "remove":
            _remove(doc, parts)
        elif kind == "replace":
            doc = _add(doc, parts, op.get("value"), replace=True)
        elif kind in ("move", "copy"):
            src = _pointer(op.get("from", ""))
            value = _remove(doc, src) if kind == "move" else copy.deepcopy(_get(doc, src))
            doc = _add(doc, parts, value)
        elif kind == "test":
            if _get(doc, parts) != op.get("value"):
                raise PatchError(f"testing value /{'/'.join(parts)} failed: test failed")
        else:
            raise PatchError(f"Unexpected kind: {kind}")
    return doc
