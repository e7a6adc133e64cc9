"""Controlling captures: ``podcap start``, ``stop``, ``delete``, ``status`` and ``list``, and waiting with progress."""
