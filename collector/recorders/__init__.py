"""Flight recorders (issue 24): rings of every pod of a target on the pods' nodes, saved as ordinary captures when
something happens.

The agents keep the rings (``StartPodRecording``) and report them with every heartbeat; this package owns the
collector's side: which recorders exist and which pods they cover (``manager``), what makes them save — the pod's
status in the API server (``triggers``), the kubelet's ``Unhealthy`` Events (``unhealthy``), the agents' packet
triggers, ``podcap trigger`` — how triggers are debounced and their windows merged (``windows``), the saves
themselves (``saves``: captures created by the collector, ``SavePodWindow`` to the agents) and where users see them
(``notify``: a Kubernetes Event on the pod, the audit trail; ``metrics``).
"""
