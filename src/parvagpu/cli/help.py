"""Help text in plain terms: usage lines name arguments as PLAN_FILE (not `{plan_file}`), flags
show no `<bool>` and repeatable options show their item type, not `<list[str]>`."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import typer
from typer.core import TyperCommand

if TYPE_CHECKING:  # annotations only: recent Typer carries its own copy of click and needs no click installed
    import click


class Command(TyperCommand):
    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        params = super().get_params(ctx)
        for p in params:
            _plain(p, ctx)
        return params

    def collect_usage_pieces(self, ctx: click.Context) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for p in self.get_params(ctx):
            if p.param_type_name == "argument":
                name = p.metavar or (p.name or "").upper()
                name = name if p.required else f"[{name}]"
                pieces.append(name + ("..." if p.nargs != 1 else ""))
        return pieces


def _plain(p: click.Parameter, ctx: click.Context) -> None:
    if p.metavar is not None:
        return
    if p.param_type_name == "argument":
        p.metavar = (p.name or "").upper()
    elif getattr(p, "is_flag", False):
        p.metavar = ""
    elif getattr(p, "multiple", False) and hasattr(p, "display_type"):
        p.metavar = re.sub(r"^<list\[(.*)\]>$", r"<\1>", p.display_type(ctx))


def use_plain_help(app: typer.Typer) -> None:
    """Every command of `app` and of its sub-apps gets the plain help (call once, after assembly)."""
    for info in app.registered_commands:
        if info.cls is None or info.cls is TyperCommand:
            info.cls = Command
    for group in app.registered_groups:
        if group.typer_instance is not None:
            use_plain_help(group.typer_instance)
