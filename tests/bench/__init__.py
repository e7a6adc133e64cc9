"""Capture benchmark (issue 3): ``python -m tests.bench.run [--smoke]`` as root."""
