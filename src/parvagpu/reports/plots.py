"""Figures for reports: GPUs per scenario per strategy, and one plan's per-GPU slot layout.

matplotlib is an optional extra (`pip install 'parvagpu[plots]'`), imported only here and only
when a figure is drawn, with the non-interactive Agg backend. Figures are returned as bytes so the
caller decides where (and how atomically) they land.
"""

from __future__ import annotations

import io
from typing import Sequence

from parvagpu.core.errors import ParvaError
from parvagpu.core.extras import install_hint
from parvagpu.core.gpus import gpu_type
from parvagpu.core.model import DeploymentMap
from parvagpu.reports.words import count

FORMATS = ("png", "svg")

_STRATEGY_COLORS = {
    "parva": "#4c72b0", "auto": "#55a868", "optimal": "#2d6a3e", "mig-only": "#c44e52",
    "mps-only": "#8172b2", "whole-gpu": "#937860",
}


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ParvaError(f"plots need matplotlib: {install_hint('plots')}") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams["svg.hashsalt"] = "parvagpu"  # stable ids: the same figure gives the same SVG
    return plt


def check_available() -> None:
    """Fail early (before any planning) when figures cannot be drawn."""
    _pyplot()


def _render(fig, formats: Sequence[str]) -> dict[str, bytes]:
    out = {}
    for fmt in formats:
        buf = io.BytesIO()
        meta = {"Software": None} if fmt == "png" else {"Creator": None, "Date": None}
        fig.savefig(buf, format=fmt, dpi=110, bbox_inches="tight", metadata=meta)
        out[fmt] = buf.getvalue()
    return out


def gpus_chart(
    scenarios: Sequence[str], strategies: Sequence[str], gpus: dict[tuple[str, str], int | None],
    bounds: dict[str, int | None], title: str, formats: Sequence[str] = FORMATS,
) -> dict[str, bytes]:
    """Grouped bars: GPUs per scenario (groups) per strategy (bars); a dash marks the proven lower
    bound of the joint MIG+MPS problem where one is known."""
    plt = _pyplot()
    n = len(strategies)
    width = 0.8 / max(n, 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(scenarios) * max(n, 3) / 3), 3.8))
    try:
        for i, st in enumerate(strategies):
            xs, ys = [], []
            for j, sc in enumerate(scenarios):
                v = gpus.get((sc, st))
                if v is not None:
                    xs.append(j - 0.4 + width * (i + 0.5))
                    ys.append(v)
            bars = ax.bar(xs, ys, width * 0.92, label=st, color=_STRATEGY_COLORS.get(st))
            ax.bar_label(bars, fontsize=6.5, padding=1)
        first = True
        for j, sc in enumerate(scenarios):
            b = bounds.get(sc)
            if b is not None:
                ax.hlines(b, j - 0.45, j + 0.45, colors="black", linestyles="dashed", linewidth=1,
                          label="proven minimum (MIG+MPS)" if first else None)
                first = False
        ax.set_xticks(range(len(scenarios)), scenarios)
        ax.set_ylabel("GPUs")
        ax.set_title(title, fontsize=10)
        ax.margins(y=0.12)
        ax.legend(fontsize=7, ncols=min(4, n + 1), loc="upper left", frameon=False)
        ax.spines[["top", "right"]].set_visible(False)
        return _render(fig, formats)
    finally:
        plt.close(fig)


def layout_chart(
    plans: Sequence[tuple[str, DeploymentMap]], formats: Sequence[str] = FORMATS,
) -> dict[str, bytes]:
    """Side-by-side per-GPU layouts: one row per GPU, memory slices across, one box per instance
    labelled with its size and model; same model, same colour in every panel."""
    plt = _pyplot()
    from matplotlib.patches import Rectangle

    models = sorted({s.model for _, p in plans for s in p.segments})
    # one colour per model: tab20 repeats after twenty, so more models sample a wide map instead
    cmap = plt.get_cmap("tab20" if len(models) <= 20 else "turbo")
    color = {m: cmap(i) if len(models) <= 20 else cmap(i / (len(models) - 1)) for i, m in enumerate(models)}
    tallest = max((p.gpus_used for _, p in plans), default=1)
    fig, axes = plt.subplots(
        1, len(plans), figsize=(4.6 * len(plans), 0.75 + 0.36 * tallest), squeeze=False
    )
    try:
        for ax, (title, p) in zip(axes[0], plans):
            gpu = gpu_type(p.gpu_type)
            for g, segs in p.by_gpu().items():
                y = g
                ax.add_patch(Rectangle((0, y - 0.42), gpu.memory_slices, 0.84, facecolor="#f2f2f2",
                                       edgecolor="#bbbbbb", linewidth=0.5))
                for s in segs:
                    w = gpu.profile(s.size).memory_slices
                    ax.add_patch(Rectangle((s.start + 0.04, y - 0.38), w - 0.08, 0.76,
                                           facecolor=color[s.model], edgecolor="white", linewidth=0.8))
                    label = f"{s.size}g {s.model}" if w >= 3 else f"{s.size}g"
                    ax.text(s.start + w / 2, y, label, ha="center", va="center", fontsize=5.5,
                            clip_on=True)
            ax.set_xlim(0, gpu.memory_slices)
            ax.set_ylim(tallest - 0.5, -0.5)
            ax.set_xticks(range(gpu.memory_slices + 1))
            ax.set_yticks(range(p.gpus_used), [f"{p.node_of(g)}/{p.local_gpu(g)}" for g in range(p.gpus_used)],
                          fontsize=6)
            ax.set_xlabel("memory slice", fontsize=7)
            ax.tick_params(axis="x", labelsize=6)
            ax.set_title(f"{title}: {count(p.gpus_used, 'GPU')}, {count(p.gpcs_used(), 'GPC')}", fontsize=9)
            for side in ("top", "right"):
                ax.spines[side].set_visible(False)
        axes[0][0].set_ylabel("node/GPU", fontsize=7)
        handles = [Rectangle((0, 0), 1, 1, facecolor=color[m]) for m in models]
        legend_rows = max(1, -(-len(models) // 6))
        bottom = (0.15 + 0.16 * legend_rows) / fig.get_figheight()
        fig.legend(handles, models, loc="lower center", ncols=min(6, max(len(models), 1)),
                   fontsize=6.5, frameon=False, bbox_to_anchor=(0.5, 0.0))
        fig.tight_layout(rect=(0, bottom, 1, 1))
        return _render(fig, formats)
    finally:
        plt.close(fig)
