"""A CRD's structural OpenAPI v3 schema applied to a custom resource as the API server applies it: pruning of
unknown fields, defaulting from ``default:``, then validation, whose failures become a 422 ``Invalid`` Status with
the server's field paths, reasons and messages (those of ``k8s.io/apiextensions-apiserver`` and kube-openapi).

Supported: ``type`` (object, array, string, integer, number, boolean), ``properties``, ``additionalProperties``
(a schema), ``items``, ``required``, ``enum``, ``minimum``/``maximum`` (and their ``exclusive`` forms),
``minLength``/``maxLength``, ``minItems``/``maxItems``, ``pattern``, ``nullable``, ``x-kubernetes-int-or-string``,
``x-kubernetes-preserve-unknown-fields``. CEL rules (``x-kubernetes-validations``) and ``format`` are not checked.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]


@dataclass(frozen=True)
class Cause:
    reason: str  # FieldValueInvalid, FieldValueRequired, FieldValueNotSupported, FieldValueTypeInvalid, ...
    field: str
    message: str

    def text(self) -> str:
        return f"{self.field}: {self.message}"


def _j(v: Any) -> str:
    return json.dumps(v) if isinstance(v, str) else ("null" if v is None else str(v).lower()
                                                     if isinstance(v, bool) else str(v))


def prune_and_default(obj: Any, schema: Obj, *, root: bool = True, path: str = "",
                      unknown: list[str] | None = None) -> Any:
    """``obj`` without the fields its schema does not know (their paths appended to ``unknown``), with the
    schema's defaults filled in."""
    if isinstance(obj, dict) and (schema.get("type") == "object" or "properties" in schema):
        out: Obj = {}
        props: Obj = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        keep_unknown = schema.get("x-kubernetes-preserve-unknown-fields") is True
        for k, v in obj.items():
            if root and k in ("apiVersion", "kind", "metadata"):
                out[k] = v
            elif k in props:
                if v is None and not props[k].get("nullable"):
                    continue  # null of a non-nullable field is pruned before defaulting, as the server does
                out[k] = prune_and_default(v, props[k], root=False, path=f"{path}.{k}", unknown=unknown)
            elif isinstance(extra, dict):
                out[k] = prune_and_default(v, extra, root=False, path=f"{path}.{k}", unknown=unknown)
            elif keep_unknown or extra is True:
                out[k] = v
            elif unknown is not None:
                unknown.append(f"{path}.{k}")
        for k, sub in props.items():
            if k not in out and "default" in sub:
                out[k] = prune_and_default(copy.deepcopy(sub["default"]), sub, root=False)
        return out
    if isinstance(obj, list) and isinstance(schema.get("items"), dict):
        return [prune_and_default(x, schema["items"], root=False, path=f"{path}[{i}]", unknown=unknown)
                for i, x in enumerate(obj)]
    return obj


def validate(obj: Any, schema: Obj, path: str = "") -> list[Cause]:
    """Every violation of ``schema`` by ``obj`` (already pruned and defaulted)."""
    causes: list[Cause] = []
    _check(obj, schema, path, causes, root=True)
    return causes


def _type_ok(v: Any, schema: Obj) -> bool:
    if v is None:
        return bool(schema.get("nullable"))
    if schema.get("x-kubernetes-int-or-string"):
        return (isinstance(v, int) and not isinstance(v, bool)) or isinstance(v, str)
    t = schema.get("type")
    if t is None:
        return True
    return {
        "object": isinstance(v, dict), "array": isinstance(v, list), "string": isinstance(v, str),
        "boolean": isinstance(v, bool),
        "integer": (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer()),
        "number": isinstance(v, (int, float)) and not isinstance(v, bool),
    }.get(str(t), True)


def _json_type(v: Any) -> str:
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    if isinstance(v, dict):
        return "object"
    return "null"


def _check(v: Any, schema: Obj, path: str, causes: list[Cause], *, root: bool = False) -> None:
    shown = path or "<root>"
    if not _type_ok(v, schema):
        if v is None:
            causes.append(Cause("FieldValueTypeInvalid", shown,
                                f'Invalid value: "null": {shown} in body must be of type {schema.get("type")}: "null"'))
        else:
            causes.append(Cause("FieldValueTypeInvalid", shown,
                                f"Invalid value: {_j(_json_type(v))}: {shown} in body must be of type "
                                f"{schema.get('type')}: {_j(_json_type(v))}"))
        return
    if v is None:
        return
    if "enum" in schema and v not in schema["enum"]:
        supported = ", ".join(_j(e) for e in schema["enum"])
        causes.append(Cause("FieldValueNotSupported", shown,
                            f"Unsupported value: {_j(v)}: supported values: {supported}"))
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        lo, hi = schema.get("minimum"), schema.get("maximum")
        if lo is not None and (v < lo or (schema.get("exclusiveMinimum") and v == lo)):
            rel = "greater than" if schema.get("exclusiveMinimum") else "greater than or equal to"
            causes.append(Cause("FieldValueInvalid", shown, f"Invalid value: {_j(v)}: {shown} in body should be "
                                                            f"{rel} {lo}"))
        if hi is not None and (v > hi or (schema.get("exclusiveMaximum") and v == hi)):
            rel = "less than" if schema.get("exclusiveMaximum") else "less than or equal to"
            causes.append(Cause("FieldValueInvalid", shown, f"Invalid value: {_j(v)}: {shown} in body should be "
                                                            f"{rel} {hi}"))
    if isinstance(v, str):
        if "maxLength" in schema and len(v) > schema["maxLength"]:
            causes.append(Cause("FieldValueTooLong", shown, f"Too long: may not be more than {schema['maxLength']} "
                                                            "bytes"))
        if "minLength" in schema and len(v) < schema["minLength"]:
            causes.append(Cause("FieldValueInvalid", shown, f"Invalid value: {_j(v)}: {shown} in body should be at "
                                                            f"least {schema['minLength']} chars long"))
        if "pattern" in schema and re.search(schema["pattern"], v) is None:
            causes.append(Cause("FieldValueInvalid", shown, f"Invalid value: {_j(v)}: {shown} in body should match "
                                                            f"'{schema['pattern']}'"))
    if isinstance(v, list):
        if "maxItems" in schema and len(v) > schema["maxItems"]:
            causes.append(Cause("FieldValueTooMany", shown, f"Too many: {len(v)}: must have at most "
                                                            f"{schema['maxItems']} items"))
        if "minItems" in schema and len(v) < schema["minItems"]:
            causes.append(Cause("FieldValueInvalid", shown, f"Invalid value: {len(v)}: {shown} in body should have "
                                                            f"at least {schema['minItems']} items"))
        items = schema.get("items")
        if isinstance(items, dict):
            for i, x in enumerate(v):
                _check(x, items, f"{path}[{i}]", causes)
    if isinstance(v, dict):
        props: Obj = schema.get("properties") or {}
        for req in schema.get("required") or []:
            if req not in v:
                causes.append(Cause("FieldValueRequired", f"{path}.{req}" if path else req, "Required value"))
        for k, x in v.items():
            if root and k in ("apiVersion", "kind", "metadata"):
                continue
            sub = props.get(k)
            if sub is None and isinstance(schema.get("additionalProperties"), dict):
                sub = schema["additionalProperties"]
            if sub is not None:
                _check(x, sub, f"{path}.{k}" if path else k, causes)
