"""The CLI's names for the shared units (``podcap.units``, ``podcap.unit_options``), for CLI modules that still
import them from here; new code imports the shared modules directly."""

from __future__ import annotations

from podcap.unit_options import any_duration_param
from podcap.units import human_bytes, human_count, human_duration

__all__ = ["any_duration_param", "human_bytes", "human_count", "human_duration"]
