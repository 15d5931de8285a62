"""Load traces: per model request rates over time, piecewise constant; read, written and generated.

File format (CSV, header `time_s,model,rate`): a row sets the model's rate (req/s) from `time_s`
until that model's next row; before its first row a model gets no traffic. The trace ends one step
after its last time, the step being the smallest gap between consecutive times in the file (a
generated trace writes one row per model per step).

Generated traces (`generate`): per model a diurnal curve (a raised cosine between `trough` x peak
at night and the peak, with the peak hour shifted per model by up to +-`spread_h` hours, as
for users in different places), multiplicative log-normal noise per step, optional bursts (the rate
x2-3 for 2-10 minutes, `bursts_per_day` per model on average) and ramps (a share of the models grows
linearly by up to x1.5 over the day). Seeded: the same arguments give the same trace.
"""

from __future__ import annotations

import csv
import math
import random
from dataclasses import dataclass
from pathlib import Path

from parvagpu.core.errors import ParvaError

HEADER = ("time_s", "model", "rate")
DAY_S = 86400.0


@dataclass(frozen=True)
class Trace:
    """`times` are the change points (sorted, the first is the start); `rates[k][i]` is model i's
    rate from times[k] to times[k+1] (or `end_s`)."""

    models: tuple[str, ...]
    times: tuple[float, ...]
    rates: tuple[tuple[float, ...], ...]
    end_s: float

    def __post_init__(self) -> None:
        if not self.models or not self.times:
            raise ParvaError("a trace needs at least one model and one time")
        if any(b <= a for a, b in zip(self.times, self.times[1:])) or self.end_s <= self.times[-1]:
            raise ParvaError("trace times must increase and end after the last change")
        if len(self.rates) != len(self.times) or any(len(r) != len(self.models) for r in self.rates):
            raise ParvaError("trace rates must have one row per time and one column per model")

    @property
    def duration_s(self) -> float:
        return self.end_s - self.times[0]

    def peak(self) -> dict[str, float]:
        return {m: max(row[i] for row in self.rates) for i, m in enumerate(self.models)}

    def mean(self) -> dict[str, float]:
        """Time-weighted mean rate per model."""
        ends = self.times[1:] + (self.end_s,)
        spans = [b - a for a, b in zip(self.times, ends)]
        return {m: sum(r[i] * s for r, s in zip(self.rates, spans)) / self.duration_s for i, m in enumerate(self.models)}


def read_trace(path: Path) -> Trace:
    """Read a trace CSV; one-line errors name the file and row."""
    try:
        with Path(path).open(newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except OSError as exc:
        raise ParvaError(f"{path}: cannot read trace: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ParvaError(f"{path}: not a text CSV file") from None
    if not rows or tuple(c.strip() for c in rows[0]) != HEADER:
        raise ParvaError(f"{path}: expected the header {','.join(HEADER)}")
    changes: dict[str, dict[float, float]] = {}
    for lineno, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        where = f"{path}:{lineno}"
        if len(row) != 3:
            raise ParvaError(f"{where}: expected 3 columns, found {len(row)}")
        t, model, rate = _number(row[0], where, "time_s"), row[1].strip(), _number(row[2], where, "rate")
        if not model:
            raise ParvaError(f"{where}: empty model name")
        if t in changes.setdefault(model, {}):
            raise ParvaError(f"{where}: model {model} has two rows at time {t:g}")
        changes[model][t] = rate
    if not changes:
        raise ParvaError(f"{path}: the trace has no rows")
    return _assemble(changes)


def _number(text: str, where: str, column: str) -> float:
    try:
        x = float(text.strip())
    except ValueError:
        raise ParvaError(f"{where}: {column} is not a number: {text.strip()!r}") from None
    if not math.isfinite(x) or x < 0:
        raise ParvaError(f"{where}: {column} must be a finite number >= 0, got {text.strip()!r}")
    return x


def _assemble(changes: dict[str, dict[float, float]]) -> Trace:
    models = tuple(sorted(changes))
    times = sorted({t for c in changes.values() for t in c})
    gaps = [b - a for a, b in zip(times, times[1:])]
    step = min(gaps) if gaps else 60.0
    current = [0.0] * len(models)
    rates = []
    for t in times:
        for i, m in enumerate(models):
            current[i] = changes[m].get(t, current[i])
        rates.append(tuple(current))
    return Trace(models, tuple(times), tuple(rates), times[-1] + step)


def trace_csv(trace: Trace) -> str:
    """The trace as CSV text: one row per model per time (rates rounded to 3 decimals)."""
    lines = [",".join(HEADER)]
    for t, row in zip(trace.times, trace.rates):
        lines += [f"{t:g},{m},{r:.3f}" for m, r in zip(trace.models, row)]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Shape:
    """What a generated trace looks like (see the module docstring)."""

    hours: float = 24.0
    step_s: float = 60.0
    trough: float = 0.3  # night rate as a share of the peak
    spread_h: float = 3.0  # peak hours spread +- this around 14:00
    noise: float = 0.05  # sigma of the per-step log-normal noise
    bursts_per_day: float = 0.0
    ramp_share: float = 0.0  # share of models with a ramp

    def __post_init__(self) -> None:
        if not self.hours > 0 or not self.step_s > 0 or self.step_s > self.hours * 3600:
            raise ParvaError("hours and step must be positive, and a step no longer than the trace")
        if not 0 < self.trough <= 1:
            raise ParvaError(f"trough must be in (0, 1], got {self.trough}")
        if self.noise < 0 or self.bursts_per_day < 0 or not 0 <= self.ramp_share <= 1:
            raise ParvaError("noise and bursts must be >= 0, the ramp share in [0, 1]")


def generate(peaks: dict[str, float], shape: Shape, seed: int = 0) -> Trace:
    """A trace for models with the given peak rates (see the module docstring)."""
    rng = random.Random(seed)
    models = tuple(sorted(peaks))
    n = int(round(shape.hours * 3600 / shape.step_s))
    times = tuple(k * shape.step_s for k in range(n))
    cols = [_model_rates(peaks[m], shape, times, rng) for m in models]
    return Trace(models, times, tuple(zip(*cols)), n * shape.step_s)


def _model_rates(peak: float, shape: Shape, times: tuple[float, ...], rng: random.Random) -> list[float]:
    phase = (14.0 + rng.uniform(-shape.spread_h, shape.spread_h)) * 3600.0
    ramp = rng.uniform(1.2, 1.5) if rng.random() < shape.ramp_share else 1.0
    ramp_start = rng.uniform(0, 0.5) * times[-1] if ramp > 1 else 0.0
    bursts = []
    expected = shape.bursts_per_day * (times[-1] + shape.step_s) / DAY_S
    for _ in range(_poisson(rng, expected)):
        start = rng.uniform(0, times[-1])
        bursts.append((start, start + rng.uniform(120, 600), rng.uniform(2.0, 3.0)))
    out = []
    for t in times:
        day = 0.5 - 0.5 * math.cos(2 * math.pi * (t - phase + DAY_S / 2) / DAY_S)  # 1 at the peak hour
        r = peak * (shape.trough + (1 - shape.trough) * day)
        if ramp > 1 and t > ramp_start:
            r *= 1 + (ramp - 1) * min(1.0, (t - ramp_start) / max(1.0, times[-1] - ramp_start))
        for b0, b1, f in bursts:
            if b0 <= t < b1:
                r *= f
        if shape.noise > 0:
            r *= math.exp(rng.gauss(-shape.noise**2 / 2, shape.noise))
        out.append(round(r, 3))
    return out


def _poisson(rng: random.Random, mean: float) -> int:
    k, p, limit = 0, 1.0, math.exp(-mean)
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1
