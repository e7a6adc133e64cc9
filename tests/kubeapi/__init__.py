"""A faithful stand-in kube-apiserver for tests (no Kubernetes can be installed on these machines)."""
