"""Captures: lifecycle, placement, ingest, durability, retention and reads (see ``manager`` for the map).

Gaps are data: each pod keeps every stream it had (``streams``), a chunk is stored in its stream's order, and
nothing about one chunk stops the stream; every loss is counted under its cause (``podcap.drops``) and noted in the
pod's gap log.
"""
