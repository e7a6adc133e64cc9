"""The PodCapture controller: captures declared as ``podcap.io/v1alpha1`` PodCapture resources (deploy/base/
crd-podcapture.yaml), reconciled by the collector started with ``--reconcile-podcaptures``.

=================  ==========================================================================================
``resource.py``    the resource's names (group, finalizer, annotations), its spec as a ``StartCaptureRequest``
                   (namespace forced to the resource's own) and a capture's ``CaptureStatus`` as its status
``lease.py``       ``LeaseElector``: a ``coordination.k8s.io`` Lease, so that one collector of several reconciles
``controller.py``  ``PodCaptureController``: list + watch, the reconcile of one resource (start, resume,
                   status, delete through the finalizer), authorization of the creator, audit
=================  ==========================================================================================

Only ``podcap.collector.kube.client`` talks to the API server; this package uses its ``KubeApi``.
"""

from __future__ import annotations
