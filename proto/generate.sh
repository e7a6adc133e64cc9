#!/usr/bin/env bash
# Regenerates the committed Python code for the podcap.v1 contract (messages, gRPC stubs, typed .pyi stubs).
# Usage: proto/generate.sh [PYTHON]   (PYTHON needs grpcio-tools and mypy-protobuf; default .venv/bin/python)
# CI runs this and fails if `git diff` shows drift between the .proto files and the committed code.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
py=${1:-"$here/../.venv/bin/python"}
case $py in /*) ;; */*) py="$PWD/$py" ;; esac
plugin_dir=$(dirname "$py")
cd "$here"
rm -f podcap/v1/*_pb2.py podcap/v1/*_pb2.pyi podcap/v1/*_pb2_grpc.py podcap/v1/*_pb2_grpc.pyi
PATH="$plugin_dir:$PATH" "$py" -m grpc_tools.protoc -I . \
  --python_out=. --mypy_out=. --grpc_python_out=. --mypy_grpc_out=. \
  podcap/v1/common.proto podcap/v1/ingest.proto podcap/v1/control.proto
