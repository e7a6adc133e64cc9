"""The declared subset of CRI ``runtime.v1`` the agent speaks: enums, messages and RuntimeService methods, with the
upstream field numbers and types, built into message classes in a private descriptor pool.

A ``Declaration`` is written in Python rather than generated: there is no generated code to drift from it, nothing
is registered in the process-wide pool (so another ``runtime.v1`` there cannot clash), protobuf skips every field
it does not know (a newer runtime's extra fields are harmless), and ``tests/integration/test_cri_wire.py`` compares
every message, field, enum and method declared here (and by the test harness, which declares the calls that create
pods on top of ``RUNTIME`` in ``tests/node/cri_runtime.py``) with the descriptor compiled into the installed
containerd binary. ``podcap.agent.pods.cri`` is the client that uses it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.message import Message

PACKAGE: Final = "runtime.v1"
_FILE_NAME: Final = "podcap/agent/cri_runtime_v1.proto"

# Enum values (upstream numbers).
SANDBOX_READY: Final = 0
SANDBOX_NOTREADY: Final = 1
NAMESPACE_MODE_POD: Final = 0
NAMESPACE_MODE_CONTAINER: Final = 1
NAMESPACE_MODE_NODE: Final = 2
NAMESPACE_MODE_TARGET: Final = 3

# ---------------------------------------------------------------------------------------------------------------
# The declaration: message -> fields (name, number, type, type name for messages/enums), upstream numbering.

_F = descriptor_pb2.FieldDescriptorProto
STRING, BOOL, INT64, UINT32, INT32 = _F.TYPE_STRING, _F.TYPE_BOOL, _F.TYPE_INT64, _F.TYPE_UINT32, _F.TYPE_INT32
MESSAGE, ENUM = _F.TYPE_MESSAGE, _F.TYPE_ENUM


@dataclass(frozen=True)
class Field:
    name: str
    number: int
    type: int
    type_name: str = ""  # short name of a message or enum in this package
    repeated: bool = False
    map_value: int | None = None  # set for map<string, X> fields (X scalar)


def map_field(name: str, number: int, value: int = STRING) -> Field:
    return Field(name, number, MESSAGE, repeated=True, map_value=value)


ENUMS: Final[dict[str, tuple[tuple[str, int], ...]]] = {
    "PodSandboxState": (("SANDBOX_READY", 0), ("SANDBOX_NOTREADY", 1)),
    "NamespaceMode": (("POD", 0), ("CONTAINER", 1), ("NODE", 2), ("TARGET", 3)),
}

MESSAGES: Final[dict[str, tuple[Field, ...]]] = {
    "VersionRequest": (Field("version", 1, STRING),),
    "VersionResponse": (
        Field("version", 1, STRING),
        Field("runtime_name", 2, STRING),
        Field("runtime_version", 3, STRING),
        Field("runtime_api_version", 4, STRING),
    ),
    "PodSandboxMetadata": (
        Field("name", 1, STRING),
        Field("uid", 2, STRING),
        Field("namespace", 3, STRING),
        Field("attempt", 4, UINT32),
    ),
    "PodSandboxStateValue": (Field("state", 1, ENUM, "PodSandboxState"),),
    "PodSandboxFilter": (
        Field("id", 1, STRING),
        Field("state", 2, MESSAGE, "PodSandboxStateValue"),
        map_field("label_selector", 3),
    ),
    "ListPodSandboxRequest": (Field("filter", 1, MESSAGE, "PodSandboxFilter"),),
    "PodSandbox": (
        Field("id", 1, STRING),
        Field("metadata", 2, MESSAGE, "PodSandboxMetadata"),
        Field("state", 3, ENUM, "PodSandboxState"),
        Field("created_at", 4, INT64),
        map_field("labels", 5),
        map_field("annotations", 6),
    ),
    "ListPodSandboxResponse": (Field("items", 1, MESSAGE, "PodSandbox", repeated=True),),
    "PodSandboxStatusRequest": (Field("pod_sandbox_id", 1, STRING), Field("verbose", 2, BOOL)),
    "PodIP": (Field("ip", 1, STRING),),
    "PodSandboxNetworkStatus": (
        Field("ip", 1, STRING),
        Field("additional_ips", 2, MESSAGE, "PodIP", repeated=True),
    ),
    "NamespaceOption": (
        Field("network", 1, ENUM, "NamespaceMode"),
        Field("pid", 2, ENUM, "NamespaceMode"),
        Field("ipc", 3, ENUM, "NamespaceMode"),
    ),
    "Namespace": (Field("options", 2, MESSAGE, "NamespaceOption"),),
    "LinuxPodSandboxStatus": (Field("namespaces", 1, MESSAGE, "Namespace"),),
    "PodSandboxStatus": (
        Field("id", 1, STRING),
        Field("metadata", 2, MESSAGE, "PodSandboxMetadata"),
        Field("state", 3, ENUM, "PodSandboxState"),
        Field("created_at", 4, INT64),
        Field("network", 5, MESSAGE, "PodSandboxNetworkStatus"),
        Field("linux", 6, MESSAGE, "LinuxPodSandboxStatus"),
        map_field("labels", 7),
        map_field("annotations", 8),
    ),
    "PodSandboxStatusResponse": (Field("status", 1, MESSAGE, "PodSandboxStatus"), map_field("info", 2)),
}

# RuntimeService methods: name -> (request message, response message). All unary.
METHODS: Final[dict[str, tuple[str, str]]] = {
    "Version": ("VersionRequest", "VersionResponse"),
    "ListPodSandbox": ("ListPodSandboxRequest", "ListPodSandboxResponse"),
    "PodSandboxStatus": ("PodSandboxStatusRequest", "PodSandboxStatusResponse"),
}


def _entry_name(field_name: str) -> str:
    # protoc's name for the synthetic map entry type: "label_selector" -> "LabelSelectorEntry".
    return "".join(part[:1].upper() + part[1:] for part in field_name.split("_")) + "Entry"


class Declaration:
    """A declared subset of ``runtime.v1``: its enums, messages and RuntimeService methods, built into message
    classes in a private descriptor pool. ``RUNTIME`` is the agent's; the test harness declares a larger one (the
    calls that create pods) on top of it."""

    def __init__(
        self,
        *,
        enums: Mapping[str, tuple[tuple[str, int], ...]],
        messages: Mapping[str, tuple[Field, ...]],
        methods: Mapping[str, tuple[str, str]],
        file_name: str,
    ) -> None:
        self.enums = dict(enums)
        self.messages = dict(messages)
        self.methods = dict(methods)
        self.file_name = file_name
        self._pool = descriptor_pool.DescriptorPool()
        self._pool.Add(self.file_descriptor())

    def file_descriptor(self) -> descriptor_pb2.FileDescriptorProto:
        """The declaration as a FileDescriptorProto (also what the wire-compatibility test compares)."""
        fd = descriptor_pb2.FileDescriptorProto(name=self.file_name, package=PACKAGE, syntax="proto3")
        for enum_name, values in self.enums.items():
            enum = fd.enum_type.add(name=enum_name)
            for value_name, number in values:
                enum.value.add(name=value_name, number=number)
        for msg_name, fields in self.messages.items():
            msg = fd.message_type.add(name=msg_name)
            for f in fields:
                label = _F.LABEL_REPEATED if f.repeated else _F.LABEL_OPTIONAL
                fp = msg.field.add(name=f.name, number=f.number, type=f.type, label=label)
                if f.map_value is not None:
                    entry = msg.nested_type.add(name=_entry_name(f.name))
                    entry.options.map_entry = True
                    entry.field.add(name="key", number=1, type=STRING, label=_F.LABEL_OPTIONAL)
                    entry.field.add(name="value", number=2, type=f.map_value, label=_F.LABEL_OPTIONAL)
                    fp.type_name = f".{PACKAGE}.{msg_name}.{entry.name}"
                elif f.type_name:
                    fp.type_name = f".{PACKAGE}.{f.type_name}"
        service = fd.service.add(name="RuntimeService")
        for method, (req, resp) in self.methods.items():
            service.method.add(name=method, input_type=f".{PACKAGE}.{req}", output_type=f".{PACKAGE}.{resp}")
        return fd

    def message_class(self, name: str) -> type[Message]:
        """The generated class of message ``name`` (short name, e.g. ``"PodSandboxStatusRequest"``)."""
        return message_factory.GetMessageClass(self._pool.FindMessageTypeByName(f"{PACKAGE}.{name}"))

    def message(self, name: str, fields: Mapping[str, Any] | None = None) -> Message:
        """A message built from a dict in protobuf JSON mapping (snake_case keys accepted), unknown keys rejected."""
        msg = self.message_class(name)()
        if fields:
            try:
                json_format.ParseDict(dict(fields), msg)
            except json_format.ParseError as e:
                raise ValueError(f"bad {name}: {e}") from e
        return msg


RUNTIME: Final = Declaration(enums=ENUMS, messages=MESSAGES, methods=METHODS, file_name=_FILE_NAME)
file_descriptor = RUNTIME.file_descriptor
message_class = RUNTIME.message_class
message = RUNTIME.message
