# podcap developer entry points. `make demo` and `make test` work on a fresh Debian/Ubuntu machine as root.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
APT_PACKAGES := python3-venv libpcap0.8 tcpdump tshark netsniff-ng iproute2 iputils-ping procps \
	containerd runc containernetworking-plugins busybox-static iptables gcc libc6-dev ceph-mon ceph-osd radosgw zstd \
	debootstrap buildah curl

.PHONY: demo test deps venv dev lint typecheck proto proto-check unit integration bench bench-smoke soak clean images

demo: venv
	$(VENV)/bin/podcap demo

# The images are built first where they can be (as root: debootstrap, chroot); elsewhere their tests skip with the
# reason, like every root-only test.
test: venv $(if $(filter 0,$(shell id -u)),images) proto-check lint typecheck
	$(PY) -m pytest tests

# System packages (idempotent; skipped when everything is present).
deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing: $$missing"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

# The virtualenv with podcap installed (editable, link-tree mode so mypy sees the podcap.* namespace) + dev tools.
venv: deps $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]' --config-settings editable_mode=strict
	touch $@

# Re-link after adding or removing modules (the strict editable install links files, not directories).
dev:
	$(PY) -m pip install -q -e '.[dev]' --config-settings editable_mode=strict --no-deps

proto:
	proto/generate.sh $(PY)

# Fails when the committed generated code differs from what the .proto files generate.
proto-check:
	proto/generate.sh $(PY) >/dev/null
	git diff --exit-code --stat -- proto/ || { echo "generated code is stale: run 'make proto' and commit"; exit 1; }
	test -z "$$(git status --porcelain --untracked-files=all -- proto/)" || { git status --short -- proto/; echo "untracked generated files: run 'make proto' and commit"; exit 1; }

lint:
	$(VENV)/bin/ruff check agent collector proto tests
	$(VENV)/bin/lint-imports

typecheck: dev
	$(VENV)/bin/mypy -p podcap

unit: venv
	$(PY) -m pytest tests/unit

bench: venv
	$(PY) -m tests.bench.run

bench-smoke: venv
	$(PY) -m tests.bench.run --smoke

# 50 pods x 5k pps with rotation and retention for SOAK_MINUTES (20): RSS, CPU and fds every minute, accounting.
SOAK_MINUTES ?= 20
SOAK_SEGMENT_TIME ?= 0
soak: venv
	$(PY) -m tests.bench.run --soak $(SOAK_MINUTES) --soak-segment-time $(SOAK_SEGMENT_TIME)

# The agent and collector images as OCI archives (build/images/podcap-{agent,collector}.oci.tar), built from
# deploy/images/Dockerfile by buildah with no daemon and no registry: a Debian base from debootstrap
# (deploy/images/base.sh, kept until `make clean`), then deploy/images/build.sh. Rebuilt only when what goes into them
# changed, so a CI run builds them once; the node tests run them (tests/node/kubelet.py).
IMAGES_DIR := build/images
IMAGE_TAG := 0.1.0
IMAGE_INPUTS := $(shell git ls-files pyproject.toml proto agent collector deploy/images 2>/dev/null)
images: $(IMAGES_DIR)/.built

$(IMAGES_DIR)/base/rootfs: deploy/images/base.sh | deps
	@start=$$(date +%s); deploy/images/base.sh $(IMAGES_DIR)/base; echo "base image root: $$(( $$(date +%s) - start )) s"

$(IMAGES_DIR)/.built: $(IMAGES_DIR)/base/rootfs $(IMAGE_INPUTS)
	@start=$$(date +%s); deploy/images/build.sh $(IMAGES_DIR)/base/rootfs $(IMAGES_DIR) $(IMAGE_TAG) \
		> $(IMAGES_DIR)/build.log 2>&1 || { tail -40 $(IMAGES_DIR)/build.log; exit 1; }; \
	grep -E '^podcap-' $(IMAGES_DIR)/build.log; echo "images built in $$(( $$(date +%s) - start )) s"
	touch $@

clean:
	rm -rf build $(VENV) .mypy_cache .pytest_cache
