"""``podcap record`` and ``podcap trigger``: flight recorders (issue 24), and how recorders are shown."""
