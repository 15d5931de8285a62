"""From the solver's values to a deployment map: each service's segments from its block's
variables, topped up to the rate, trimmed of what it does not need, re-packed and placed."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from fractions import Fraction
from typing import Sequence

import numpy as np

from parvagpu.core.model import DeploymentMap, PlacedSegment, Segment
from parvagpu.planning.optimizer.blocks import Problem
from parvagpu.planning.optimizer.highs import pack


def realize(problem: Problem, offsets: Sequence[int], values, time_limit: float) -> DeploymentMap | None:
    """Segments from block variables, trimmed, re-packed and placed; None on a packing time-out."""
    blocks, request = problem.blocks, problem.request
    segs = _trim(_decode(blocks, offsets, values), blocks)
    for _ in range(3):
        counts = Counter(s.size for lst in segs for s in lst)
        x = pack([counts[s] for s in request.gpu.sizes], problem.columns, time_limit)
        if x is None:
            return None
        plan = _place(segs, x, problem)
        cap: dict[str, float] = defaultdict(float)
        for ps in plan.segments:  # summed in plan order, as a checker would
            cap[ps.model] += ps.segment.throughput
        short = {s.model for s in request.services if cap[s.model] < s.rate}
        if not short:
            return plan
        _top_up(segs, blocks, short)  # a float sum fell a hair short of the rate
    raise AssertionError("optimizer could not decode a plan meeting every rate")


def _members(blocks):
    for b in blocks:
        for svc in b.services:
            yield svc, b


def _decode(blocks, offsets: Sequence[int], values) -> list[list[Segment]]:
    """Each service's segments (services in block order)."""
    z = np.round(np.asarray(values)).astype(np.int64).tolist()
    out: list[list[Segment]] = []
    for b_i, b in enumerate(blocks):
        off = offsets[b_i]
        if b.covers is not None:
            chosen = [o for o in range(len(b.covers)) for _ in range(z[off + o])]
            if len(chosen) < len(b.services):
                chosen += [int(np.argmin(b.covers.sum(axis=1)))] * (len(b.services) - len(chosen))
            for svc, o in zip(b.services, chosen):
                out.append([
                    Segment(svc.model, t) for (_, t), n in zip(b.options, b.covers[o].tolist()) for _ in range(n)
                ])
        else:
            svc = b.services[0]
            y = z[off:off + len(b.options)]
            out.append([Segment(svc.model, t) for (_, t), n in zip(b.options, y) for _ in range(n)])
    _top_up(out, blocks, None)
    return out


def _reaches(throughputs: Sequence[float], rate: float) -> bool:
    """Whether the exact sum of `throughputs` is at least `rate`. The correctly rounded sum
    decides unless it lands on the rate itself; then exact arithmetic does."""
    total = math.fsum(throughputs)
    if total != rate:
        return total > rate
    return sum(map(Fraction, throughputs), Fraction(0)) >= Fraction(rate)


def _top_up(out: list[list[Segment]], blocks, only: set[str] | None) -> None:
    """Add segments where a model falls short of its rate (solver tolerance), or one more for the
    models in `only` (a float sum in plan order fell a hair short)."""
    for segs, (svc, b) in zip(out, _members(blocks)):
        if only is not None and svc.model not in only:
            continue
        force = only is not None
        while force or not _reaches([s.throughput for s in segs], svc.rate):
            gap = Fraction(svc.rate) - sum((Fraction(s.throughput) for s in segs), Fraction(0))
            _, t = next(((k, t) for k, t in b.options if Fraction(t.throughput) >= gap), b.options[-1])
            segs.append(Segment(svc.model, t))
            force = False


def _trim(out: list[list[Segment]], blocks) -> list[list[Segment]]:
    """Drop segments a model does not need, largest first: fewer GPCs, never more GPUs."""
    res = []
    for segs, (svc, _) in zip(out, _members(blocks)):
        keep = sorted(segs, key=lambda s: (-s.size, s.throughput))
        i = 0
        while i < len(keep):
            rest = keep[:i] + keep[i + 1:]
            if _reaches([s.throughput for s in rest], svc.rate):
                keep = rest
            else:
                i += 1
        res.append(keep)
    return res


def _place(segs: list[list[Segment]], x, problem: Problem) -> DeploymentMap:
    """Give each GPU its layout's placements and fill size-s slots with size-s segments, models in
    service order, so one model's segments sit together."""
    request, columns = problem.request, problem.columns
    order = {s.model: i for i, s in enumerate(request.services)}
    queues: dict[int, list[Segment]] = defaultdict(list)
    for s in sorted((s for lst in segs for s in lst), key=lambda s: (order[s.model], -s.size)):
        queues[s.size].append(s)
    pos = {s: 0 for s in queues}
    placed: list[PlacedSegment] = []
    g = 0
    for c, n in zip(columns, x):
        for _ in range(int(n)):
            on_gpu = []
            for size, st in c.placements:
                q = queues.get(size)
                if q is not None and pos[size] < len(q):
                    on_gpu.append(PlacedSegment(q[pos[size]], g, st))
                    pos[size] += 1
            if on_gpu:
                placed.extend(on_gpu)
                g += 1
    left = sum(len(q) - pos[s] for s, q in queues.items())
    if left:  # the packing covers the demand, so this cannot happen
        raise AssertionError(f"optimizer decoding left {left} segments unplaced")
    return DeploymentMap(
        gpu_type=request.gpu.name, strategy=problem.strategy, max_procs=request.max_procs,
        gpus_per_node=request.gpus_per_node, segments=tuple(placed), services=request.services,
    )
