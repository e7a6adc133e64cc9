"""Kubernetes access for the collector, one concern per module.

=================  ==========================================================================================
``errors.py``      ``KubeError`` and its subclasses; the client's exceptions translated into them (one table)
``client.py``      configuration (kubeconfig / in-cluster) and ``KubeApi``: the calls podcap makes
``pods.py``        pod objects (API JSON) as ``PodRef``: which pods are kept, names checked
``watch.py``       ``PodWatch``: list + watch with resourceVersion, re-list on 410 Gone, backoff on errors
``inventory.py``   ``ClusterInventory``: the one watched pod cache that serves every capture and selector
``selectors.py``   label and field selectors: one grammar module, one ``Selector``, one ``SelectorError``
=================  ==========================================================================================

Layers, lowest first: ``errors`` and ``selectors`` (no collector imports), ``pods``, ``client``, ``watch``,
``inventory``. Only ``client.py`` and ``errors.py`` import ``kubernetes``.

Import from the modules, not from this package: ``pods.py`` needs ``PodRef`` from ``podcap.collector.targets``,
which needs ``selectors.py``, so this ``__init__`` must not import ``client`` or anything above it at import time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

# The package's error base, safe to import eagerly (errors.py imports nothing of the collector).
from podcap.collector.kube.errors import KubeError as KubeError

if TYPE_CHECKING:
    from podcap.collector.kube.client import KubeApi as KubeApi
    from podcap.collector.kube.client import in_cluster as in_cluster
    from podcap.collector.kube.client import load_api as load_api


def __getattr__(name: str) -> object:
    # Temporary: ``auth.py`` (``KubeApi``) still imports from the package as it did from the old ``kube.py``.
    # Resolved lazily to keep the import order free of the targets -> selectors -> client -> targets cycle.
    if name in ("KubeApi", "in_cluster", "load_api"):
        from podcap.collector.kube import client

        return getattr(client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
