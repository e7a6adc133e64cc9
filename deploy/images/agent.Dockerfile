# syntax=docker/dockerfile:1
#
# The podcap agent image. Build from the repository root (the build context must hold pyproject.toml):
#   docker build -f deploy/images/agent.Dockerfile -t podcap-agent:0.1.0 .
#   podman build -f deploy/images/agent.Dockerfile -t podcap-agent:0.1.0 .
#   buildah bud -f deploy/images/agent.Dockerfile -t podcap-agent:0.1.0 .
#
# Stage 1 builds wheels for podcap and all its dependencies and installs them into a virtualenv; stage 2 copies only
# that virtualenv onto a clean slim image, so no compiler, headers or build tree reach the runtime image.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# A compiler and libpcap headers: for podcap's own C library (podcap._native, the per-packet and framing paths; the
# build fails below if it did not compile) and for any dependency that has no wheel for the build platform
# (pcapy-ng, grpcio on less common architectures). They stay in this stage.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential libpcap-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Only what the distribution is built from (the repository root also holds .venv, tests, build trees...).
# README.md is left out on purpose: it only feeds the wheel's long description, and setuptools builds without it.
COPY pyproject.toml ./
COPY proto/ proto/
COPY agent/ agent/
COPY collector/ collector/
RUN pip wheel --wheel-dir /wheels . \
 && python -m venv /opt/podcap \
 && /opt/podcap/bin/pip install --no-index --find-links /wheels podcap \
 && /opt/podcap/bin/podcap-agent --help > /dev/null \
 && /opt/podcap/bin/python -c "from podcap import native; assert native.library(), 'podcap._native was not built'"

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="podcap-agent" \
      org.opencontainers.image.description="podcap node agent: finds pod network namespaces and captures their traffic with libpcap" \
      org.opencontainers.image.licenses="Apache-2.0"
# libpcap from Debian (1.10.x): the capture fast path calls it through ctypes (pcap_dispatch with podcap's C handler
# from the podcap._native library, which the builder stage compiled into the wheel).
RUN apt-get update \
 && apt-get install -y --no-install-recommends libpcap0.8 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=builder /opt/podcap /opt/podcap
ENV PATH=/opt/podcap/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Root, but not privileged: the DaemonSet grants exactly NET_RAW, SYS_ADMIN and SYS_PTRACE and drops the
# rest (see deploy/base/agent-daemonset.yaml). setns() and packet sockets need those capabilities in the initial
# user namespace, which a non-root uid would not keep across exec without file capabilities.
USER 0:0
ENTRYPOINT ["podcap-agent"]
