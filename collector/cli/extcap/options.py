"""What the podcap interface offers in Wireshark's capture options, and what a capture started from it asks for.

The options mirror ``podcap start`` (collector, TLS CA, token; namespace, pods, label selector; BPF filter, snaplen,
interface) plus whether the capture goes on being stored after Wireshark stops. Namespaces and pods are lists
fetched from the collector (``ListCapturablePods``): only what this user may capture, as the collector's
authorizer decides for ``start``. Pods are a multicheck tree under their namespaces; the namespace selector has a
reload button that lists again with the collector, CA and token typed in the dialog (Wireshark passes them to
``--extcap-reload-option``). Without them the lists come from the environment (``PODCAP_COLLECTOR``,
``PODCAP_TLS_CA``, ``PODCAP_TOKEN``), which ``podcap extcap install`` can preset in the installed wrapper.

A listing failure never fails the dialog: the lists then hold one entry that says what went wrong, and the
capture itself reports the same failure as an extcap error.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, replace

import grpc

from podcap.collector.cli.client import CollectorError, default_address
from podcap.collector.cli.errors import collector_hint, one_line
from podcap.collector.cli.extcap.protocol import ExtcapArg, ExtcapValue, multicheck_values
from podcap.collector.cli.words import INTERFACES
from podcap.collector.kube.kinds import kinds_text, split_object
from podcap.errors import InvalidInputError, PodcapError
from podcap.tls import TlsConfigError
from podcap.v1 import common_pb2, control_pb2

ALL_NAMESPACES = "*"

ARG_COLLECTOR = ExtcapArg(0, "--collector", "Collector address", "string", group="Collector", required=True,
                          tooltip="HOST:PORT of podcap-collector (PODCAP_COLLECTOR)")
ARG_TLS_CA = ExtcapArg(1, "--tls-ca", "Collector CA certificate", "fileselect", group="Collector", mustexist=True,
                       tooltip="PEM file of the collector's CA: connect with TLS (PODCAP_TLS_CA)")
ARG_TOKEN = ExtcapArg(2, "--token", "Token", "password", group="Collector",
                      tooltip="Bearer token for the collector, e.g. from kubectl create token (PODCAP_TOKEN); "
                      "Wireshark never stores it")
ARG_TOKEN_FILE = ExtcapArg(3, "--token-file", "Token file", "fileselect", group="Collector", mustexist=True,
                           tooltip="A file holding the bearer token, used when no token is typed above (tshark "
                           "passes no password option: use this or PODCAP_TOKEN)")
ARG_NAMESPACE = ExtcapArg(4, "--namespace", "Namespace", "selector", group="Pods", reload=True,
                          placeholder="List again with the collector settings",
                          tooltip="Capture the pods of this namespace (those matching the label selector, or the "
                          "pods checked below)")
ARG_PODS = ExtcapArg(5, "--pods", "Pods", "multicheck", group="Pods",
                     tooltip="Capture exactly these pods (all in one namespace); none checked: the namespace")
ARG_SELECTOR = ExtcapArg(6, "--selector", "Label selector", "string", group="Pods",
                         tooltip="Kubernetes label selector, e.g. app=web,tier in (a,b)")
ARG_FILTER = ExtcapArg(7, "--filter", "Capture filter", "string", group="Capture",
                       tooltip="BPF filter (tcpdump syntax) applied on the nodes; ANDed with Wireshark's capture "
                       "filter")
ARG_SNAPLEN = ExtcapArg(8, "--snaplen", "Snapshot length", "unsigned", group="Capture", default="0",
                        range="0,262144", tooltip="Bytes kept of each packet; 0 keeps whole packets")
ARG_INTERFACE = ExtcapArg(9, "--interface", "Capture on", "selector", group="Capture",
                          tooltip="veth: the pod's host-side veth; eth0: the pod's eth0 from inside; all: every "
                          "interface in the pod, loopback included")
ARG_KEEP = ExtcapArg(10, "--keep", "Keep capturing after Wireshark stops", "boolflag", group="Capture",
                     tooltip="Leave the podcap capture running and stored when Wireshark stops (stop it with "
                     "podcap stop ID; the id is in the file's comment)")
ARG_ALL_COPIES = ExtcapArg(11, "--all-copies", "Every pod's copy of a packet", "boolflag", group="Capture",
                           tooltip="Show a packet seen on two chosen pods (client and server) once per pod; by "
                           "default it shows once, and the other pod's copy is counted in its statistics")
ARG_OBJECT = ExtcapArg(12, "--object", "Workload, Service or node", "string", group="Pods",
                       tooltip="Instead of pods: deploy/NAME, statefulset/NAME, daemonset/NAME, job/NAME or svc/NAME "
                       "of the chosen namespace (its pods as they come and go), or node/NAME (the node's own "
                       "network; needs create nodes/capture)")
ARGS = (ARG_COLLECTOR, ARG_TLS_CA, ARG_TOKEN, ARG_TOKEN_FILE, ARG_NAMESPACE, ARG_PODS, ARG_SELECTOR, ARG_OBJECT,
        ARG_FILTER, ARG_SNAPLEN, ARG_INTERFACE, ARG_KEEP, ARG_ALL_COPIES)


class ExtcapOptionError(InvalidInputError):
    """The options chosen in Wireshark do not make one capture (pods of two namespaces, say)."""


@dataclass(frozen=True)
class CollectorSettings:
    address: str
    tls_ca: str
    token: str
    token_file: str = ""

    def bearer_token(self) -> str:
        """``token`` (typed in, or PODCAP_TOKEN's: ``collector_settings``), else the token file's content. Raises
        ExtcapOptionError for a token file that cannot be read."""
        if self.token or not self.token_file:
            return self.token
        try:
            with open(self.token_file) as f:
                return f.read().strip()
        except OSError as e:
            raise ExtcapOptionError(f"cannot read the token file {self.token_file}: {e.strerror}") from e


@dataclass(frozen=True)
class CaptureOptions:
    """The options of one capture, as Wireshark passed them."""

    collector: CollectorSettings
    namespace: str
    pods: tuple[str, ...]  # "namespace/name"
    selector: str
    filter: str
    snaplen: int
    interface: str
    keep: bool
    all_copies: bool = False
    object: str = ""  # KIND/NAME (podcap.collector.kube.kinds), "" for pods


def add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(ARG_COLLECTOR.call, default="")
    p.add_argument(ARG_TLS_CA.call, default="")
    p.add_argument(ARG_TOKEN.call, default="")
    p.add_argument(ARG_TOKEN_FILE.call, default="")
    p.add_argument(ARG_NAMESPACE.call, default="")
    p.add_argument(ARG_PODS.call, default="")
    p.add_argument(ARG_SELECTOR.call, default="")
    p.add_argument(ARG_OBJECT.call, default="")
    p.add_argument(ARG_FILTER.call, default="")
    p.add_argument(ARG_SNAPLEN.call, default="0")
    p.add_argument(ARG_INTERFACE.call, default="veth")
    p.add_argument(ARG_KEEP.call, action="store_true")
    p.add_argument(ARG_ALL_COPIES.call, action="store_true")


def collector_settings(ns: argparse.Namespace, env: dict[str, str]) -> CollectorSettings:
    """The dialog's values, else the environment's (as the podcap CLI reads it)."""
    return CollectorSettings(address=ns.collector or env.get("PODCAP_COLLECTOR") or default_address(),
                             tls_ca=ns.tls_ca or env.get("PODCAP_TLS_CA", ""),
                             token=ns.token or ("" if ns.token_file else env.get("PODCAP_TOKEN", "")),
                             token_file=ns.token_file)


def capture_options(ns: argparse.Namespace, env: dict[str, str]) -> CaptureOptions:
    try:
        snaplen = int(ns.snaplen or 0)
    except ValueError:
        raise ExtcapOptionError(f"snapshot length {ns.snaplen!r} is not a number") from None
    if ns.interface not in INTERFACES:
        raise ExtcapOptionError(f"capture interface {ns.interface!r} is not one of {', '.join(INTERFACES)}")
    return CaptureOptions(collector=collector_settings(ns, env), namespace=ns.namespace.strip(),
                          pods=tuple(multicheck_values(ns.pods)), selector=ns.selector.strip(),
                          filter=ns.filter.strip(), snaplen=snaplen, interface=ns.interface, keep=ns.keep,
                          all_copies=ns.all_copies, object=ns.object.strip())


def combined_filter(own: str, wireshark: str) -> str:
    """The podcap option's filter ANDed with Wireshark's capture filter (either may be empty)."""
    parts = [f.strip() for f in (own, wireshark) if f.strip()]
    return parts[0] if len(parts) == 1 else " and ".join(f"({f})" for f in parts)


def start_request(opts: CaptureOptions, capture_filter: str) -> control_pb2.StartCaptureRequest:
    """The ``podcap start`` this capture amounts to. Raises ExtcapOptionError when the choice is not one target."""
    target = control_pb2.Target(selector=opts.selector)
    if opts.object:
        try:
            ref = split_object(opts.object)
        except PodcapError as e:
            raise ExtcapOptionError(str(e)) from e
        if ref is None:
            raise ExtcapOptionError(f"{opts.object!r} is not KIND/NAME: a capture targets {kinds_text()}")
        if opts.pods:
            raise ExtcapOptionError(f"{ref.text} and checked pods exclude each other: uncheck the pods or clear "
                                    "the workload")
        if not ref.is_node and opts.namespace == ALL_NAMESPACES:
            raise ExtcapOptionError(f"{ref.text} is in one namespace: choose it instead of all namespaces")
        target.object.CopyFrom(control_pb2.TargetObject(kind=ref.kind, name=ref.name))
        if not ref.is_node:
            target.namespace = opts.namespace or "default"
    elif opts.pods:
        split = [p.split("/", 1) for p in opts.pods]
        bare = [p for p, s in zip(opts.pods, split, strict=True) if len(s) != 2 or not all(s)]
        if bare:
            raise ExtcapOptionError(f"pods are chosen as namespace/name, not {', '.join(bare)}: choose them in the "
                                    "dialog's list of pods")
        namespaces = sorted({s[0] for s in split})
        if len(namespaces) > 1:
            raise ExtcapOptionError(f"the chosen pods are in several namespaces ({', '.join(namespaces)}); "
                                    "one capture covers one namespace: check pods of one namespace only")
        if opts.namespace not in ("", ALL_NAMESPACES, namespaces[0]):
            raise ExtcapOptionError(f"the chosen pods are in namespace {namespaces[0]!r}, not in the chosen "
                                    f"namespace {opts.namespace!r}")
        target.namespace = namespaces[0]
        target.pod_names.extend(s[1] for s in split)
    elif opts.namespace == ALL_NAMESPACES:
        target.all_namespaces = True
    else:
        target.namespace = opts.namespace or "default"
    return control_pb2.StartCaptureRequest(
        target=target,
        settings=common_pb2.CaptureSettings(filter=combined_filter(opts.filter, capture_filter),
                                            snaplen=opts.snaplen, interface=INTERFACES[opts.interface]),
        note="started from Wireshark (podcap-extcap)" + ("; kept after Wireshark stops" if opts.keep else ""),
    )


# ---- the dialog ----

Lister = Callable[[CollectorSettings], control_pb2.ListCapturablePodsResponse]


OPTIONS = "the podcap interface's options (the gear next to it)"


def wireshark_hint(e: PodcapError) -> str:
    """What to do after ``e`` in Wireshark: the CLI's hints name command-line options, these the dialog's."""
    if isinstance(e, CollectorError):
        code = e.code
        if e.actionable:
            return ""
        if code == grpc.StatusCode.UNAVAILABLE:
            return f"check that podcap-collector runs and the collector address in {OPTIONS}"
        if code == grpc.StatusCode.NOT_FOUND:
            return f"check the namespace, the pods and the label selector in {OPTIONS}"
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            return f"change it in {OPTIONS}"
        if code == grpc.StatusCode.UNAUTHENTICATED:
            return f"check the token or token file in {OPTIONS}"
        return collector_hint(e, prog="podcap", command="start")
    if isinstance(e, TlsConfigError):
        return f"check the collector CA certificate in {OPTIONS}"
    return f"change it in {OPTIONS}" if isinstance(e, ExtcapOptionError) else ""


def listing_error(e: CollectorError) -> str:
    """The one line for this failure (without the program name), with what to do in Wireshark."""
    return one_line(str(e), wireshark_hint(e))


def namespace_values(listing: control_pb2.ListCapturablePodsResponse | str) -> list[ExtcapValue]:
    """The namespace selector's choices: the namespaces with pods this user may capture (the first is the
    default), "all" when the user may capture cluster-wide; a failure as a single entry saying what failed."""
    if isinstance(listing, str):
        return [ExtcapValue(ARG_NAMESPACE.number, "", f"cannot list namespaces: {listing}", default=True)]
    values = [ExtcapValue(ARG_NAMESPACE.number, ns, ns, default=i == 0) for i, ns in enumerate(listing.namespaces)]
    if listing.all_namespaces:
        values.append(ExtcapValue(ARG_NAMESPACE.number, ALL_NAMESPACES, "all namespaces", default=not values))
    if not values:
        values.append(ExtcapValue(ARG_NAMESPACE.number, "", "no pods you may capture", default=True))
    return values


def pod_values(listing: control_pb2.ListCapturablePodsResponse | str) -> list[ExtcapValue]:
    """The pods multicheck: one heading per namespace (not checkable), its pods under it."""
    n = ARG_PODS.number
    if isinstance(listing, str):
        return [ExtcapValue(n, "error", f"cannot list pods: {listing}", enabled=False)]
    values: list[ExtcapValue] = []
    for ns in listing.namespaces:
        values.append(ExtcapValue(n, ns, ns, enabled=False))
        values += [ExtcapValue(n, f"{p.namespace}/{p.name}", f"{p.name} (node {p.node})", parent=ns)
                   for p in listing.pods if p.namespace == ns]
    if listing.truncated:
        values.append(ExtcapValue(n, "more", "… more pods: use the namespace and a label selector", enabled=False))
    return values


def interface_values() -> list[ExtcapValue]:
    return [ExtcapValue(ARG_INTERFACE.number, name, name, default=name == "veth") for name in INTERFACES]


def config_lines(settings: CollectorSettings, lister: Lister, *, reload_option: str = "") -> list[str]:
    """``--extcap-config`` output: every option with its choices, or (``reload_option``) one option's choices."""
    listing: control_pb2.ListCapturablePodsResponse | str
    try:
        listing = lister(settings)
    except CollectorError as e:
        listing = listing_error(e)
    except PodcapError as e:  # an unreadable token file or CA certificate
        listing = str(e)
    if reload_option:
        if reload_option == ARG_NAMESPACE.name:
            return [v.line() for v in namespace_values(listing)]
        return []
    defaults = {ARG_COLLECTOR.number: settings.address, ARG_TLS_CA.number: settings.tls_ca}
    lines = [replace(arg, default=defaults.get(arg.number) or arg.default).line() for arg in ARGS]
    lines += [v.line() for v in namespace_values(listing)]
    lines += [v.line() for v in pod_values(listing)]
    lines += [v.line() for v in interface_values()]
    return lines
