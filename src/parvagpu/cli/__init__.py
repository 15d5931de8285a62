"""The command line, assembled in one place: every verb is registered here, in pipeline order.

Each sub-command module holds plain functions (parse, call the stage, render) and never imports
this module, so the CLI has no import cycle and this file is the table of contents of the tool.
"""

from __future__ import annotations

import typer

from parvagpu import __version__
from parvagpu.cli import compare, control, diff, export, live, node, plan, profile, serving, verify
from parvagpu.cli.help import use_plain_help

app = typer.Typer(
    help="Serve many DNN models on the fewest MIG/MPS-partitioned GPUs while meeting every SLO.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"parvagpu {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    """parvagpu: plan, check and apply MIG+MPS GPU segments for DNN inference.

    Exit codes: 0 success; 1 invalid plan, or an apply refused or rolled back; 2 bad input;
    3 cannot be served as asked; 4 hardware or system failure."""


# 1. Profile
app.command("profile")(profile.profile)
# 2. Plan, and look at the GPU types it plans for
app.command("plan")(plan.plan)
app.command("gpus")(plan.gpus)
app.command("compare")(compare.compare)
app.command("diff")(diff.diff)
# 6. Check (independent of the planners)
app.command("verify")(verify.verify)
# 3. Apply on a node, or export for cluster tools
app.command("apply")(node.apply_cmd)
app.command("status")(node.status_cmd)
app.command("teardown")(node.teardown_cmd)
export_app = typer.Typer(help="Write a plan for clusters: Kubernetes manifests or mig-parted configs.", no_args_is_help=True)
export_app.command("k8s")(export.export_k8s)
export_app.command("mig-parted")(export.export_mig_parted)
app.add_typer(export_app, name="export")
# 4. Serve, and 6. load and simulate
app.command("serve")(serving.serve)
app.command("load")(serving.load)
app.command("simulate")(serving.simulate)
# 7. Follow the load: synthetic traces (replayed by `simulate --trace`)
app.command("trace-gen")(control.trace_gen)
app.command("control")(live.control)

use_plain_help(app)  # usage lines name arguments as PLAN_FILE; no <bool> or <list[str]> in help

__all__ = ["app"]
