"""The command line, assembled in one place: every verb is listed here, in pipeline order.

Each sub-command module holds plain functions (parse, call the stage, render) and never imports
this module, so the CLI has no import cycle and `VERBS` is the table of contents of the tool.
A process that runs one verb imports only that verb's module (`build(only=...)`, from
`parvagpu.__main__`): `plan --time-limit` counts from the process start, and the other verbs'
modules took about 0.2 s of it. `app`, the whole tool, is assembled on first use (help, tests).
"""

from __future__ import annotations

import importlib

import typer

from parvagpu import __version__
from parvagpu.cli.help import use_plain_help

# (group or None, verb, module under parvagpu.cli, function)
VERBS: tuple[tuple[str | None, str, str, str], ...] = (
    # 1. Profile
    (None, "profile", "profile", "profile"),
    # 2. Plan, and look at the GPU types it plans for
    (None, "plan", "plan", "plan"),
    (None, "gpus", "plan", "gpus"),
    (None, "compare", "compare", "compare"),
    (None, "diff", "diff", "diff"),
    # 6. Check (independent of the planners)
    (None, "verify", "verify", "verify"),
    # 3. Apply on a node, or export for cluster tools
    (None, "apply", "node", "apply_cmd"),
    (None, "status", "node", "status_cmd"),
    (None, "teardown", "node", "teardown_cmd"),
    ("export", "k8s", "export", "export_k8s"),
    ("export", "mig-parted", "export", "export_mig_parted"),
    # 4. Serve, and 6. load and simulate
    (None, "serve", "serving", "serve"),
    (None, "load", "serving", "load"),
    (None, "simulate", "serving", "simulate"),
    # 7. Follow the load: synthetic traces (replayed by `simulate --trace`)
    (None, "trace-gen", "control", "trace_gen"),
    (None, "control", "live", "control"),
)
GROUPS = {"export": "Write a plan for clusters: Kubernetes manifests or mig-parted configs."}
NAMES = frozenset(group or verb for group, verb, _, _ in VERBS)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"parvagpu {__version__}")
        raise typer.Exit()


def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    """parvagpu: plan, check and apply MIG+MPS GPU segments for DNN inference.

    Exit codes: 0 success; 1 invalid plan, or an apply refused or rolled back; 2 bad input;
    3 cannot be served as asked; 4 hardware or system failure."""


def build(only: str | None = None) -> typer.Typer:
    """The CLI with every verb, or with the verb (or group) `only` alone."""
    cli = typer.Typer(
        help="Serve many DNN models on the fewest MIG/MPS-partitioned GPUs while meeting every SLO.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    cli.callback()(main)
    groups: dict[str, typer.Typer] = {}
    for group, verb, module, function in VERBS:
        if only is not None and (group or verb) != only:
            continue
        command = getattr(importlib.import_module(f"parvagpu.cli.{module}"), function)
        if group is None:
            cli.command(verb)(command)
            continue
        if group not in groups:
            groups[group] = typer.Typer(help=GROUPS[group], no_args_is_help=True)
            cli.add_typer(groups[group], name=group)
        groups[group].command(verb)(command)
    use_plain_help(cli)  # usage lines name arguments as PLAN_FILE; no <bool> or <list[str]> in help
    return cli


def __getattr__(name: str):
    if name == "app":
        globals()["app"] = whole = build()
        return whole
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["app", "build", "VERBS"]
