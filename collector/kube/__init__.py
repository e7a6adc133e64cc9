"""Kubernetes access for the collector, one concern per module.

=================  ==========================================================================================
``errors.py``      ``KubeError`` and its subclasses; the client's exceptions translated into them (one table)
``client.py``      configuration (kubeconfig / in-cluster) and ``KubeApi``: the calls podcap makes
``pods.py``        pod objects (API JSON) as ``PodRef``: which pods are kept, names checked
``watch.py``       ``PodWatch``: list + watch with resourceVersion, re-list on 410 Gone, backoff on errors
``inventory.py``   ``ClusterInventory``: the one watched pod cache that serves every capture and selector
``selectors.py``   label and field selectors: one grammar module, one ``Selector``, one ``SelectorError``
``kinds.py``       the kinds a capture can target (``deploy/NAME``...): kubectl's names, the one error for the rest
``workloads.py``   a workload's or Service's selector from its API JSON; a Service without one refused
``endpoints.py``   ``ServiceEndpoints``: a Service's endpoint pods from its EndpointSlices, kept current by a watch
=================  ==========================================================================================

Layers, lowest first: ``errors``, ``selectors`` and ``kinds`` (no collector imports), ``workloads``, ``pods``,
``client``, ``watch``, ``endpoints``, ``inventory``. Only ``client.py`` and ``errors.py`` import ``kubernetes``.

Import from the modules, not from this package. This ``__init__`` imports nothing on purpose: target resolution
(and through it the CLI) imports ``selectors.py``, and must not pay for importing the ``kubernetes`` package.
"""

from __future__ import annotations
