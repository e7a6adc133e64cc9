"""A real single-node "cluster" for tests: containerd + runc + CNI bridge, pods run through CRI (see harness.py)."""
