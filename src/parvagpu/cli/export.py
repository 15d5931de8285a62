"""`parvagpu export k8s|mig-parted`: a checked plan written for cluster tools."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from parvagpu.cli.common import ForceInvalidOpt, err, fail_on, read_checked_plan
from parvagpu.core.errors import ParvaError
from parvagpu.export.common import write_files
from parvagpu.fileio.reader import read_text
from parvagpu.export.k8s import DEFAULT_IMAGE, DEFAULT_NODE_LABEL, DEFAULT_PORT, FLEET_NODE_LABEL, k8s_files
from parvagpu.export.mig_parted import mig_parted_files


def export_mig_parted(
    plan_file: Path = typer.Argument(..., help="Plan JSON written by `parvagpu plan`."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory to write into (created if missing)."),
    device_filter: bool = typer.Option(False, "--device-filter", help="Restrict each group to the plan's GPU type by PCI id."),
    namespace: str = typer.Option("gpu-operator", "--namespace", help="Namespace of the MIG manager's ConfigMap."),
    force_invalid: bool = ForceInvalidOpt,
) -> None:
    """mig-parted v1 config per node, its ConfigMap, and nvidia.com/mig.config node labels.

    mig-parted cannot pin start slots; `parvagpu apply` is the exact path (docs/apply.md)."""
    try:
        plan = read_checked_plan(plan_file, force=force_invalid)
        files = mig_parted_files(plan, plan_file.name, device_filter, namespace)
        written = write_files(out, files)
    except ParvaError as exc:
        fail_on(exc)
    err.print(f"wrote {len(written)} files to {escape(str(out))}", highlight=False)


def export_k8s(
    plan_file: Path = typer.Argument(..., help="Plan JSON written by `parvagpu plan`."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory to write into (created if missing)."),
    models_file: Optional[Path] = typer.Option(
        None, "--models", help="Models config the pods serve with (put in the ConfigMap); default: the embedded "
        "example's, when it has every model of the plan."),
    image: str = typer.Option(DEFAULT_IMAGE, "--image", help="Container image built from docker/Dockerfile."),
    port: int = typer.Option(DEFAULT_PORT, "--port", help="Port of each pod and Service (the OIP HTTP API)."),
    node_label: Optional[str] = typer.Option(
        None, "--node-label",
        help=f"Node label key the Deployments select on (default {DEFAULT_NODE_LABEL}, value the plan node index; "
        f"a fleet plan: {FLEET_NODE_LABEL}, value the fleet node name).",
    ),
    namespace: Optional[str] = typer.Option(None, "--namespace", help="Namespace of the manifests."),
    force_invalid: bool = ForceInvalidOpt,
) -> None:
    """A ConfigMap with the plan, a Deployment per segment requesting nvidia.com/mig-<profile> on its
    node, and a Service per model.

    Each pod starts its own MPS daemon on its MIG device, then `parvagpu serve PLAN --segment NAME`:
    the serving code of `serve`, one segment per pod."""
    from parvagpu.cli.serving import models_config

    try:
        plan = read_checked_plan(plan_file, force=force_invalid)
        models_path, _ = models_config(models_file, {s.model for s in plan.services})
        files = k8s_files(plan, read_text(models_path, "models config"), image, node_label, namespace, port, force_invalid)
        written = write_files(out, files)
    except ParvaError as exc:
        fail_on(exc)
    n = sum(1 for t in files.values() if "\nkind: Deployment\n" in t)
    err.print(f"wrote {len(written)} files to {escape(str(out))} ({n} Deployments, {len(written) - n - 2} Services)",
              highlight=False)
