"""Temporary: removed once captures.py imports from podcap.collector.kube.

The watched pod cache moved to ``podcap.collector.kube.inventory`` and the field selectors to
``podcap.collector.kube.selectors`` (one ``Selector`` type and one ``SelectorError`` for label and field
selectors). These re-exports keep the capture manager's imports working while it is being split.
"""

from podcap.collector.kube.inventory import ClusterInventory as ClusterInventory
from podcap.collector.kube.inventory import ClusterListener as ClusterListener
from podcap.collector.kube.inventory import ClusterNotSyncedError as ClusterNotSyncedError
from podcap.collector.kube.selectors import Selector
from podcap.collector.kube.selectors import parse_field_selector as parse_field_selector
from podcap.collector.kube.selectors import pod_fields as pod_fields

FieldSelector = Selector

__all__ = ["ClusterInventory", "ClusterListener", "ClusterNotSyncedError", "FieldSelector", "parse_field_selector",
           "pod_fields"]
