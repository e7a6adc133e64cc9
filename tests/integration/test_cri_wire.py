"""Our hand-declared CRI messages are wire-compatible with the runtime.v1 API compiled into the installed containerd.

containerd registers its protobuf descriptors gzipped in the binary (gogo/protobuf), so the upstream
FileDescriptorProto of ``runtime.v1`` can be read out of ``/usr/bin/containerd`` without any .proto file. Every
message, field, map entry, enum value and RPC that ``podcap.agent.pods.cri_declaration`` declares must match it
exactly (number, type, label, referenced type); and a message serialized by our classes must parse identically
with upstream's.
"""

from __future__ import annotations

import os
import shutil
import zlib

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.message import Message

from tests.node import cri_runtime as cri

pytestmark = pytest.mark.containerd

_GZIP_MAGIC = b"\x1f\x8b\x08"


def _containerd_binary() -> str | None:
    path = shutil.which("containerd") or "/usr/bin/containerd"
    return path if os.path.exists(path) else None


@pytest.fixture(scope="module")
def upstream() -> descriptor_pb2.FileDescriptorProto:
    binary = _containerd_binary()
    if binary is None:
        pytest.skip("containerd is not installed (apt-get install containerd)")
    with open(binary, "rb") as f:
        data = f.read()
    pos = data.find(_GZIP_MAGIC)
    while pos >= 0:
        try:
            raw = zlib.decompressobj(31).decompress(data[pos : pos + (4 << 20)])
            fd = descriptor_pb2.FileDescriptorProto.FromString(raw)
        except Exception:  # noqa: BLE001 - most gzip-looking bytes are not descriptors
            fd = None
        if fd is not None and fd.package == cri.PACKAGE and any(s.name == "RuntimeService" for s in fd.service):
            return fd
        pos = data.find(_GZIP_MAGIC, pos + 1)
    pytest.fail(f"no {cri.PACKAGE} descriptor with RuntimeService found in {binary}")


def _messages(fd: descriptor_pb2.FileDescriptorProto) -> dict[str, descriptor_pb2.DescriptorProto]:
    out: dict[str, descriptor_pb2.DescriptorProto] = {}
    stack = [(m.name, m) for m in fd.message_type]
    while stack:
        name, msg = stack.pop()
        out[name] = msg
        stack.extend((f"{name}.{n.name}", n) for n in msg.nested_type)
    return out


def _field_key(f: descriptor_pb2.FieldDescriptorProto) -> tuple[int, int, int, str]:
    return f.number, f.type, f.label, f.type_name


def test_every_declared_field_matches_upstream(upstream: descriptor_pb2.FileDescriptorProto) -> None:
    ours = _messages(cri.file_descriptor())
    theirs = _messages(upstream)
    problems = []
    for name, msg in ours.items():
        if name not in theirs:
            problems.append(f"{name}: no such upstream message")
            continue
        up_fields = {f.name: f for f in theirs[name].field}
        if msg.options.map_entry != theirs[name].options.map_entry:
            problems.append(f"{name}: map_entry differs")
        for f in msg.field:
            up = up_fields.get(f.name)
            if up is None:
                problems.append(f"{name}.{f.name}: no such upstream field")
            elif _field_key(f) != _field_key(up):
                problems.append(f"{name}.{f.name}: ours {_field_key(f)} upstream {_field_key(up)}")
    assert not problems, "\n".join(problems)
    assert len(ours) > 40  # the comparison really covered the declaration


def test_enums_match_upstream(upstream: descriptor_pb2.FileDescriptorProto) -> None:
    theirs = {e.name: {v.name: v.number for v in e.value} for e in upstream.enum_type}
    for enum in cri.file_descriptor().enum_type:
        assert enum.name in theirs
        assert {v.name: v.number for v in enum.value} == theirs[enum.name]


def test_methods_match_upstream(upstream: descriptor_pb2.FileDescriptorProto) -> None:
    (service,) = [s for s in upstream.service if s.name == "RuntimeService"]
    theirs = {m.name: m for m in service.method}
    (ours,) = cri.file_descriptor().service
    for method in ours.method:
        up = theirs[method.name]
        assert (method.input_type, method.output_type) == (up.input_type, up.output_type), method.name
        assert not (up.client_streaming or up.server_streaming), method.name


def test_bytes_round_trip_with_upstream_classes(upstream: descriptor_pb2.FileDescriptorProto) -> None:
    """What our client sends parses identically with upstream's classes, and what the runtime sends back with ours."""
    clean = descriptor_pb2.FileDescriptorProto()
    clean.CopyFrom(upstream)
    del clean.dependency[:]  # gogoproto options only: code-generation hints irrelevant on the wire
    clean.ClearField("options")
    for msg in _messages(clean).values():
        keep_map = msg.options.map_entry
        msg.ClearField("options")
        if keep_map:
            msg.options.map_entry = True
        for f in msg.field:
            f.ClearField("options")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(clean)

    def upstream_class(name: str) -> type[Message]:
        return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{cri.PACKAGE}.{name}"))

    request = {
        "config": {
            "metadata": {"name": "web-0", "namespace": "shop", "uid": "u-1", "attempt": 3},
            "hostname": "web-0",
            "labels": {"app": "web"},
            "linux": {
                "cgroup_parent": "/kubepods/besteffort/podu-1",
                "security_context": {"namespace_options": {"network": "NODE", "pid": "CONTAINER"}},
            },
        }
    }
    ours = cri.message("RunPodSandboxRequest", request)
    parsed = upstream_class("RunPodSandboxRequest").FromString(ours.SerializeToString())
    assert json_format.MessageToDict(parsed, preserving_proto_field_name=True) == json_format.MessageToDict(
        ours, preserving_proto_field_name=True
    )
    response = upstream_class("PodSandboxStatusResponse")()
    json_format.ParseDict(
        {
            "status": {
                "id": "sb1",
                "metadata": {"name": "web-0", "uid": "u-1", "namespace": "shop"},
                "state": "SANDBOX_NOTREADY",
                "created_at": "1700000000000000000",
                "network": {"ip": "10.0.0.5", "additional_ips": [{"ip": "fd00::5"}]},
                "linux": {"namespaces": {"options": {"network": "NODE"}}},
                "labels": {"app": "web"},
                "runtime_handler": "runc",  # not declared by us: skipped as an unknown field
            },
            "info": {"info": '{"pid": 42}'},
        },
        response,
    )
    decoded = cri.message_class("PodSandboxStatusResponse").FromString(response.SerializeToString())
    as_dict = cri.as_dict(decoded)
    assert as_dict["status"]["state"] == cri.SANDBOX_NOTREADY
    assert as_dict["status"]["linux"]["namespaces"]["options"]["network"] == cri.NAMESPACE_MODE_NODE
    assert as_dict["status"]["network"]["additional_ips"] == [{"ip": "fd00::5"}]
    assert as_dict["status"]["created_at"] == "1700000000000000000"
    assert as_dict["info"] == {"info": '{"pid": 42}'}
