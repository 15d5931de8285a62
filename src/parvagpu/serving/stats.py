"""Per-model latency statistics shared by the simulator and the load generator, so a prediction
and a measurement are summarised, tabled and plotted the same way."""

from __future__ import annotations

from rich.markup import escape

import io

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

from parvagpu.core.errors import ParvaError
from parvagpu.fileio.writer import atomic_write
from parvagpu.core.extras import install_hint

# Where p99 sits relative to the SLO L: the planner's rule promises p99 < L with margin.
LOOSE_BELOW = 0.5  # p99 < 0.5 L: the 0.45 L rule left most of the budget unused
TIGHT_ABOVE = 0.8  # p99 > 0.8 L: little margin left


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an ascending sequence; NaN when empty.

    Nearest rank, not interpolation: p99 is a latency some request really had."""
    n = len(sorted_values)
    if n == 0:
        return math.nan
    k = max(1, math.ceil(q / 100.0 * n))
    return float(sorted_values[k - 1])


@dataclass(frozen=True)
class ModelStats:
    """Outcome of one model's traffic. Every request sent is ok, rejected (503), failed or timed
    out; `lost = sent - (ok + rejected + failed + timeouts)` must be 0."""

    model: str
    rate: float  # offered rate, req/s
    slo_ms: float
    sent: int
    ok: int
    rejected: int
    failed: int
    timeouts: int
    duration_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    within_slo: int  # ok requests with latency <= SLO

    @property
    def lost(self) -> int:
        return self.sent - (self.ok + self.rejected + self.failed + self.timeouts)

    @property
    def throughput(self) -> float:
        return self.ok / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def attainment(self) -> float:
        """Share of all sent requests answered within the SLO (a rejection is a miss)."""
        return self.within_slo / self.sent if self.sent else math.nan

    @property
    def verdict(self) -> str:
        """p99 against the SLO: violated, tight, ok or loose (see LOOSE_BELOW / TIGHT_ABOVE)."""
        if self.ok == 0 or math.isnan(self.p99_ms):
            return "no data"
        r = self.p99_ms / self.slo_ms
        if r > 1.0:
            return "violated"
        if r > TIGHT_ABOVE:
            return "tight"
        if r < LOOSE_BELOW:
            return "loose"
        return "ok"

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(
            lost=self.lost,
            throughput=self.throughput,
            attainment=self.attainment,
            verdict=self.verdict,
        )
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}


def summarize(
    model: str,
    rate: float,
    slo_ms: float,
    latencies_ms: Iterable[float],
    sent: int,
    rejected: int = 0,
    failed: int = 0,
    timeouts: int = 0,
    duration_s: float = 0.0,
) -> ModelStats:
    """Latencies are those of the ok requests only (a list or a numpy array)."""
    import numpy as np

    lat = np.sort(np.asarray(list(latencies_ms) if not hasattr(latencies_ms, "dtype") else latencies_ms,
                             dtype=float))
    ok = int(lat.size)
    return ModelStats(
        model=model, rate=rate, slo_ms=slo_ms, sent=sent, ok=ok, rejected=rejected, failed=failed,
        timeouts=timeouts, duration_s=duration_s,
        p50_ms=percentile(lat, 50), p95_ms=percentile(lat, 95), p99_ms=percentile(lat, 99),
        max_ms=float(lat[-1]) if ok else math.nan, mean_ms=float(lat.mean()) if ok else math.nan,
        within_slo=int(np.count_nonzero(lat <= slo_ms)),
    )


VERDICT_LEGEND = (
    f"verdict: p99 against the SLO L: violated (> L), tight (> {TIGHT_ABOVE:g} L), ok, "
    f"loose (< {LOOSE_BELOW:g} L: the 0.45 L rule left most of the budget unused), no data (nothing answered)"
)


def missed(s: ModelStats) -> bool:
    """The model missed its SLO: p99 above it, nothing answered, or a request lost, failed or timed
    out (503s alone are backpressure, not a miss)."""
    return bool(s.lost or s.failed or s.timeouts or not s.ok or s.p99_ms > s.slo_ms)


def verdict_line(stats: Sequence[ModelStats]) -> str:
    """One line for the whole run; the commands exit 1 when it names a model."""
    bad = [s.model for s in stats if missed(s)]
    if not bad:
        return f"verdict: every model meets its SLO ({len(stats)} model{'' if len(stats) == 1 else 's'})"
    return f"verdict: {len(bad)} of {len(stats)} models miss their SLO or lost requests: {', '.join(bad)}"


def _ms(x: float) -> str:
    return "-" if math.isnan(x) else (f"{x:.1f}" if x < 100 else f"{x:.0f}")


def stats_table(stats: Sequence[ModelStats], title: str):
    """A Rich table: one row per model (err = failed + timed out)."""
    from rich import box
    from rich.table import Table

    t = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("model", "rate/s", "SLO ms", "sent", "ok", "503", "err", "lost", "p50", "p95", "p99",
                "p99/SLO", "attain", "verdict"):
        if col == "model":  # full names, folded if need be: a cut name can match another model
            t.add_column(col, justify="left", overflow="fold", min_width=min(24, max((len(s.model) for s in stats), default=5)))
        else:
            t.add_column(col, justify="left" if col == "verdict" else "right", no_wrap=col != "verdict")
    colors = {"violated": "red", "tight": "yellow", "ok": "green", "loose": "cyan"}
    for s in stats:
        ratio = s.p99_ms / s.slo_ms if s.ok else math.nan
        v = s.verdict
        t.add_row(
            escape(s.model), f"{s.rate:.4g}", f"{s.slo_ms:g}", str(s.sent), str(s.ok), str(s.rejected),
            str(s.failed + s.timeouts), str(s.lost),
            _ms(s.p50_ms), _ms(s.p95_ms), _ms(s.p99_ms),
            "-" if math.isnan(ratio) else f"{ratio:.2f}",
            "-" if math.isnan(s.attainment) else f"{100 * s.attainment:.2f}%",
            f"[{colors.get(v, 'white')}]{v}[/]",
        )
    return t


def console():
    """stdout console; wide when not a terminal so tables are not cut in logs."""
    import sys

    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=160)


def plot_cdf(latencies: dict[str, Sequence[float]], slos: dict[str, float], path: Path, title: str) -> None:
    """Latency CDF per model with its SLO as a dashed line, written to `path`."""
    atomic_write(Path(path), render_cdf(latencies, slos, path, title))


def render_cdf(latencies: dict[str, Sequence[float]], slos: dict[str, float], path: Path, title: str) -> bytes:
    """The latency CDF figure in the format `path` names, in memory (matplotlib, the `plots` extra),
    so a command writing it beside other outputs can write all of them or none."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ParvaError(f"the latency plot needs matplotlib: {install_hint('plots')}") from None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    models = sorted(latencies)
    # one colour per model however many there are: tab10 repeats after ten, so sample a wide map
    palette = plt.get_cmap("tab10" if len(models) <= 10 else "turbo")
    for i, model in enumerate(models):
        xs = sorted(latencies[model])
        if not xs:
            continue
        color = palette(i) if len(models) <= 10 else palette(i / max(len(models) - 1, 1))
        ys = [(k + 1) / len(xs) for k in range(len(xs))]
        ax.step(xs, ys, where="post", label=model, color=color)
        if model in slos:
            ax.axvline(slos[model], color=color, linestyle="--", linewidth=0.8)
            ax.annotate(f"{model} SLO {slos[model]:g} ms", (slos[model], 0.02), rotation=90, fontsize=6,
                        color=color, ha="right", va="bottom", xycoords=("data", "axes fraction"))
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("latency (ms, log scale); dashed: SLO")
    ax.set_ylabel("fraction of ok requests")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    fmt = Path(path).suffix.lower().lstrip(".") or "png"
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format=fmt)  # rendered in memory, written by the one safe writer
    except ValueError:
        raise ParvaError(f"{path}: cannot write a plot as {fmt!r}; use .png, .pdf or .svg") from None
    finally:
        plt.close(fig)
    return buf.getvalue()
