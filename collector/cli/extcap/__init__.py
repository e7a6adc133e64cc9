"""``podcap-extcap``: podcap as a Wireshark capture interface (the extcap protocol, its options, a live capture into
Wireshark's fifo) and ``podcap extcap install|uninstall``. ``python -m podcap.collector.cli.extcap`` runs it."""
