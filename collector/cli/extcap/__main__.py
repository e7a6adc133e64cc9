"""``python -m podcap.collector.cli.extcap``: what an installed extcap script runs."""

from podcap.collector.cli.extcap.main import main

main()
