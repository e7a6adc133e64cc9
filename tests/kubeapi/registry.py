"""Writes through the stand-in's API, with the API server's rules (its registry strategies): create, update,
patch and delete of any kind, custom resources through their CRD's schema, the status subresource and
generation, finalizers and deletionTimestamp, namespaces and CRDs that take their contents with them.

``Registry`` is a base of ``KubeApiStandin``: it works on its kinds, stores and resourceVersion history.
"""

from __future__ import annotations

import copy
import json
import uuid

from tests.kubeapi.kinds import Kind, builtin_defaults, crd_kind
from tests.kubeapi.patch import PatchError, json_patch, merge_patch, strategic_merge_patch
from tests.kubeapi.schema import Cause, prune_and_default, validate
from tests.kubeapi.store import _NAME, ApiError, Obj, Revision, Store, _key, _now, conflict, invalid, not_found


class Registry:
    """The API's writes (the HTTP handler and ``apply_crd`` call them)."""

    kinds: dict[tuple[str, str], Kind]
    stores: dict[tuple[str, str], Store]
    rev: Revision

    def _register(self, kind: Kind) -> None:
        raise NotImplementedError


    def _admit(self, kind: Kind, version: str, obj: Obj, name: str, strict: bool) -> Obj:
        """A custom resource through its schema: pruned, defaulted, validated (422)."""
        if not kind.custom:
            return obj
        schema = kind.schemas.get(version) or {}
        unknown: list[str] = []
        obj = prune_and_default(obj, schema, unknown=unknown)
        if unknown and strict:
            raise ApiError(400, "BadRequest", "strict decoding error: " + ", ".join(
                f'unknown field "{u.lstrip(".")}"' for u in unknown))
        causes = validate(obj, schema)
        if causes:
            raise invalid(kind, name, causes)
        return obj

    def _check_name(self, kind: Kind, name: str) -> None:
        if not _NAME.match(name) or len(name) > 253:
            raise invalid(kind, name, [Cause("FieldValueInvalid", "metadata.name",
                                             f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist '
                                             "of lower case alphanumeric characters, '-' or '.', and must start and "
                                             "end with an alphanumeric character (e.g. 'example.com', regex used for "
                                             "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*"
                                             "[a-z0-9])?)*')")])

    def _check_kind(self, kind: Kind, version: str, body: Obj) -> None:
        want = kind.api_version(version)
        if body.get("apiVersion") not in (None, want):
            raise ApiError(400, "BadRequest", f"the API version in the data ({body.get('apiVersion')}) does not "
                                              f"match the expected API version ({want})")
        if body.get("kind") not in (None, kind.kind):
            raise ApiError(400, "BadRequest", f"the kind in the data ({body.get('kind')}) does not match the "
                                              f"expected kind ({kind.kind})")

    def api_create(self, kind: Kind, version: str, namespace: str | None, body: Obj, *, dry_run: bool,
                   strict: bool = False) -> Obj:
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the body of the request is not a JSON object")
        self._check_kind(kind, version, body)
        obj = copy.deepcopy(body)
        obj["apiVersion"], obj["kind"] = kind.api_version(version), kind.kind
        md = obj.setdefault("metadata", {})
        if not md.get("name") and md.get("generateName"):
            md["name"] = md["generateName"] + uuid.uuid4().hex[:5]
        name = str(md.get("name") or "")
        if not name:
            raise invalid(kind, "", [Cause("FieldValueRequired", "metadata.name", "Required value: name or "
                                                                                  "generateName is required")])
        if kind.namespaced:
            if md.get("namespace") not in (None, "", namespace):
                raise ApiError(400, "BadRequest", "the namespace of the provided object does not match the "
                                                  "namespace sent on the request")
            md["namespace"] = namespace
        else:
            md.pop("namespace", None)
        self._check_name(kind, name)
        for k in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"):
            md.pop(k, None)
        md["uid"], md["creationTimestamp"], md["generation"] = str(uuid.uuid4()), _now(), 1
        if kind.status_subresource and kind.key not in (("", "namespaces"), ("", "pods")):
            obj.pop("status", None)
        if kind.key == ("", "namespaces"):
            md.setdefault("labels", {})["kubernetes.io/metadata.name"] = name
            obj["spec"], obj["status"] = {"finalizers": ["kubernetes"]}, {"phase": "Active"}
        if kind.key == ("apiextensions.k8s.io", "customresourcedefinitions"):
            self._check_crd(obj)
        if not kind.custom:
            builtin_defaults(kind, obj)
        obj = self._admit(kind, version, obj, name, strict)
        store = self.stores[kind.key]
        with self.rev.cond:
            if kind.namespaced:
                ns = self.stores[("", "namespaces")].current.get(("", namespace or ""))
                if ns is None:
                    raise ApiError(404, "NotFound", f'namespaces "{namespace}" not found',
                                   {"name": namespace, "kind": "namespaces"})
                if ns["metadata"].get("deletionTimestamp"):
                    raise ApiError(403, "Forbidden", f"{kind.plural} \"{name}\" is forbidden: unable to create new "
                                                     f"content in namespace {namespace} because it is being "
                                                     "terminated", {"name": name, "kind": kind.plural})
            if _key(obj) in store.current:
                raise ApiError(409, "AlreadyExists", f'{kind.resource_text} "{name}" already exists',
                               {"name": name, "group": kind.group, "kind": kind.plural})
            if dry_run:
                return obj
            if kind.key == ("apiextensions.k8s.io", "customresourcedefinitions"):
                obj["status"] = self._crd_status(obj)
                out = store.write("ADDED", obj, None)
                self._register(crd_kind(out))
                return out
            return store.write("ADDED", obj, None)

    def _check_crd(self, crd: Obj) -> None:
        kind = self.kinds[("apiextensions.k8s.io", "customresourcedefinitions")]
        spec, name = crd.get("spec") or {}, crd["metadata"]["name"]
        causes: list[Cause] = []
        names = spec.get("names") or {}
        if name != f"{names.get('plural')}.{spec.get('group')}":
            causes.append(Cause("FieldValueInvalid", "metadata.name", f'Invalid value: "{name}": must be '
                                                                      "spec.names.plural+\".\"+spec.group"))
        if not spec.get("versions"):
            causes.append(Cause("FieldValueRequired", "spec.versions", "Required value: must have exactly one "
                                                                       "version marked as storage version"))
        for i, v in enumerate(spec.get("versions") or []):
            if not (v.get("schema") or {}).get("openAPIV3Schema"):
                causes.append(Cause("FieldValueRequired", f"spec.versions[{i}].schema.openAPIV3Schema",
                                    "Required value: schemas are required"))
        if causes:
            raise invalid(kind, name, causes)

    @staticmethod
    def _crd_status(crd: Obj) -> Obj:
        now = _now()
        names = dict(crd["spec"]["names"])
        names.setdefault("singular", names["kind"].lower())
        names.setdefault("listKind", names["kind"] + "List")
        return {"acceptedNames": names, "storedVersions": [v["name"] for v in crd["spec"]["versions"]
                                                           if v.get("storage")],
                "conditions": [
                    {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "lastTransitionTime": now,
                     "message": "no conflicts found"},
                    {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                     "lastTransitionTime": now, "message": "the initial names have been accepted"}]}

    def api_update(self, kind: Kind, namespace: str | None, name: str, body: Obj, sub: str, *, dry_run: bool,
                   strict: bool = False, version: str | None = None, unconditional: bool = False) -> Obj:
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the body of the request is not a JSON object")
        version = version or kind.versions[0]
        self._check_kind(kind, version, body)
        store = self.stores[kind.key]
        with self.rev.cond:
            old = store.current.get((namespace or "", name))
            if old is None:
                raise not_found(kind, name)
            bmd = body.get("metadata") or {}
            if bmd.get("name") not in (None, name):
                raise ApiError(400, "BadRequest", f"the name of the object ({bmd.get('name')}) does not match the "
                                                  f"name on the URL ({name})")
            rv = str(bmd.get("resourceVersion") or "")
            if rv and rv != old["metadata"]["resourceVersion"]:
                raise conflict(kind, name)
            if not rv and kind.custom and not unconditional:
                raise invalid(kind, name, [Cause("FieldValueInvalid", "metadata.resourceVersion",
                                                 "Invalid value: 0x0: must be specified for an update")])
            new = self._prepare_update(kind, version, old, body, sub, name, strict)
            if _same(old, new):
                return copy.deepcopy(old)
            if dry_run:
                return new
            if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
                out = store.write("DELETED", new, old)
                self._reap()
                return out
            out = store.write("MODIFIED", new, old)
            if kind.key == ("apiextensions.k8s.io", "customresourcedefinitions"):
                self._register(crd_kind(out))
            return out

    def _prepare_update(self, kind: Kind, version: str, old: Obj, body: Obj, sub: str, name: str,
                        strict: bool) -> Obj:
        if sub == "status":
            new = copy.deepcopy(old)
            if "status" in body:
                new["status"] = copy.deepcopy(body["status"])
            else:
                new.pop("status", None)
        else:
            new = copy.deepcopy(body)
            new["apiVersion"], new["kind"] = old["apiVersion"], old["kind"]
            md = new.setdefault("metadata", {})
            for k in ("uid", "creationTimestamp", "namespace", "name", "generation", "deletionTimestamp",
                      "deletionGracePeriodSeconds"):
                if k in old["metadata"]:
                    md[k] = old["metadata"][k]
                else:
                    md.pop(k, None)
            if kind.status_subresource:
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
                else:
                    new.pop("status", None)
            if old["metadata"].get("deletionTimestamp"):
                added = set(md.get("finalizers") or []) - set(old["metadata"].get("finalizers") or [])
                if added:
                    raise invalid(kind, name, [Cause("FieldValueForbidden", "metadata.finalizers",
                                                     "Forbidden: no new finalizers can be added if the object is "
                                                     "being deleted, found new finalizers " + json.dumps(
                                                         sorted(added)))])
            if kind.key == ("apiextensions.k8s.io", "customresourcedefinitions"):
                self._check_crd(new)
                new["status"] = old.get("status") or self._crd_status(new)
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        new = self._admit(kind, version, new, name, strict)
        ignored = ("metadata", "status") if kind.status_subresource else ("metadata",)
        if {k: v for k, v in new.items() if k not in ignored} != {k: v for k, v in old.items() if k not in ignored}:
            new["metadata"]["generation"] = int(old["metadata"].get("generation") or 1) + 1
        return new

    def api_patch(self, kind: Kind, version: str, namespace: str | None, name: str, content_type: str, body: bytes,
                  sub: str, *, dry_run: bool, strict: bool) -> Obj:
        ct = content_type.split(";")[0].strip()
        if ct == "application/strategic-merge-patch+json" and kind.custom:
            raise ApiError(415, "UnsupportedMediaType", 'the body of the request was in an unknown format - '
                                                        "accepted media types include: application/json-patch+json, "
                                                        "application/merge-patch+json, application/apply-patch+yaml")
        if ct not in ("application/merge-patch+json", "application/json-patch+json",
                      "application/strategic-merge-patch+json"):
            raise ApiError(415, "UnsupportedMediaType", f"the stand-in does not accept {ct!r} patches (server-side "
                                                        "apply is not served)")
        try:
            patch = json.loads(body or b"null")
        except ValueError as e:
            raise ApiError(400, "BadRequest", f"error decoding patch: {e}") from e
        with self.rev.cond:
            old = self.stores[kind.key].current.get((namespace or "", name))
            if old is None:
                raise not_found(kind, name)
            try:
                if ct == "application/json-patch+json":
                    new = json_patch(old, patch)
                elif ct == "application/merge-patch+json":
                    new = merge_patch(old, patch)
                else:
                    new = strategic_merge_patch(old, patch)
            except PatchError as e:
                raise ApiError(422, "Invalid", str(e)) from e
            if not isinstance(new, dict):
                raise ApiError(400, "BadRequest", "the patch does not make an object")
            # A resourceVersion the patch sets is a precondition (checked by update); none: unconditional.
            new.setdefault("metadata", {})
            return self.api_update(kind, namespace, name, new, sub, dry_run=dry_run, strict=strict,
                                   version=version, unconditional=True)

    def api_delete(self, kind: Kind, namespace: str | None, name: str, options: Obj, *, dry_run: bool) -> Obj:
        store = self.stores[kind.key]
        with self.rev.cond:
            old = store.current.get((namespace or "", name))
            if old is None:
                raise not_found(kind, name)
            pre = options.get("preconditions") or {}
            if pre.get("uid") and pre["uid"] != old["metadata"].get("uid"):
                raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {kind.resource_text} "{name}": '
                                                f"Precondition failed: UID in precondition: {pre['uid']}, UID in "
                                                f"object meta: {old['metadata'].get('uid')}",
                               {"name": name, "group": kind.group, "kind": kind.plural})
            if pre.get("resourceVersion") and pre["resourceVersion"] != old["metadata"]["resourceVersion"]:
                raise conflict(kind, name)
            if dry_run:
                return copy.deepcopy(old)
            out = self._delete_now(kind, old)
            self._reap()
            return out

    def _delete_now(self, kind: Kind, old: Obj) -> Obj:
        """Delete, or mark for deletion while finalizers (or contents, for namespaces and CRDs) remain."""
        store = self.stores[kind.key]
        name = old["metadata"]["name"]
        if kind.key == ("", "namespaces"):
            for s in list(self.stores.values()):
                if s.kind.namespaced:
                    for k, o in list(s.current.items()):
                        if k[0] == name and not o["metadata"].get("deletionTimestamp"):
                            self._delete_now(s.kind, o)
        if kind.key == ("apiextensions.k8s.io", "customresourcedefinitions"):
            defined = crd_kind(old)
            for o in list(self.stores.get(defined.key, Store(defined, self.rev)).current.values()):
                if not o["metadata"].get("deletionTimestamp"):
                    self._delete_now(defined, o)
        finalizers = list(old["metadata"].get("finalizers") or [])
        if kind.key == ("", "namespaces") and self._holds(name):
            finalizers.append("kubernetes")
        if kind.key == ("apiextensions.k8s.io", "customresourcedefinitions") and self.stores.get(
                crd_kind(old).key) and self.stores[crd_kind(old).key].current:
            finalizers.append("customresourcecleanup.apiextensions.k8s.io")
        if not finalizers:
            out = store.write("DELETED", old, old)
            if kind.key == ("apiextensions.k8s.io", "customresourcedefinitions"):
                self.kinds.pop(crd_kind(old).key, None)
            return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                    "details": {"name": name, "group": kind.group, "kind": kind.plural,
                                "uid": out["metadata"].get("uid")}}
        if old["metadata"].get("deletionTimestamp"):
            return copy.deepcopy(old)
        new = copy.deepcopy(old)
        new["metadata"]["deletionTimestamp"] = _now()
        new["metadata"]["deletionGracePeriodSeconds"] = 0
        if "generation" in new["metadata"]:
            new["metadata"]["generation"] = int(new["metadata"]["generation"]) + 1
        if kind.key == ("", "namespaces"):
            new.setdefault("status", {})["phase"] = "Terminating"
        return store.write("MODIFIED", new, old)

    def _holds(self, namespace: str) -> bool:
        return any(k[0] == namespace for s in self.stores.values() if s.kind.namespaced for k in s.current)

    def _reap(self) -> None:
        """Finish deleting namespaces and CRDs being deleted whose contents are gone (their controllers' work)."""
        keys: list[tuple[str, str]] = [("", "namespaces"), ("apiextensions.k8s.io", "customresourcedefinitions")]
        for key in keys:
            store = self.stores[key]
            for o in list(store.current.values()):
                md = o["metadata"]
                if not md.get("deletionTimestamp") or md.get("finalizers"):
                    continue
                if key == ("", "namespaces") and self._holds(md["name"]):
                    continue
                if key[1] == "customresourcedefinitions":
                    defined = crd_kind(o)
                    if self.stores.get(defined.key) and self.stores[defined.key].current:
                        continue
                    self.kinds.pop(defined.key, None)
                store.write("DELETED", o, o)


def _same(a: Obj, b: Obj) -> bool:
    """Equal apart from the resourceVersion (an update that changes nothing writes nothing)."""
    a, b = copy.deepcopy(a), copy.deepcopy(b)
    a["metadata"].pop("resourceVersion", None)
    b["metadata"].pop("resourceVersion", None)
    return a == b
