"""The program's rows of demand: services grouped into blocks, each with its non-dominated segment
options and, when few enough to list, its minimal covers."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from parvagpu.core.errors import Unservable
from parvagpu.core.model import Service, Triplet
from parvagpu.planning.configurator import unservable
from parvagpu.planning.optimizer.columns import Column, substitutes
from parvagpu.planning.optimizer.covers import covers_many
from parvagpu.planning.request import PlanRequest

# Most cover columns in all: the blocks with the most covers fall back to the y form first.
MAX_COVERS = 1_000_000

Options = tuple[tuple[int, Triplet], ...]  # (size index, triplet), non-dominated, size order


@dataclass(frozen=True, eq=False)
class Block:
    """One service, or interchangeable services (same points, latency and rate), solved as a unit."""

    services: tuple[Service, ...]
    rate: float
    options: Options
    covers: object = None  # int array (covers x options), or None for the y form


@dataclass(frozen=True)
class Problem:
    """Everything the solve steps share: the request, the layouts, the blocks and the strategy
    name the plans carry."""

    request: PlanRequest
    columns: tuple[Column, ...]
    blocks: tuple[Block, ...]
    strategy: str


class _OptionTable:
    """Each (profile content, latency SLO)'s options, computed once: the best admissible triplet
    of every size some layout uses, less the sizes a smaller, at least as fast size can replace."""

    def __init__(self, request: PlanRequest, columns: Sequence[Column]) -> None:
        self.request, self.gpu, self.profiles = request, request.gpu, request.profiles
        self.sub = substitutes(columns, len(self.gpu.sizes))
        used = {s for c in columns for s, n in zip(self.gpu.sizes, c.counts) if n}
        self.index_of = {s: i for i, s in enumerate(self.gpu.sizes) if s in used}
        self.cache: dict[tuple[bytes, float], Options] = {}

    def key(self, svc: Service) -> tuple[bytes, float]:
        # A float latency stands for its exact decimal value (repr is one-to-one on floats).
        return (self.profiles[svc.model].content_key, float(svc.latency_ms))

    def options(self, i: int, key: tuple[bytes, float]) -> Options:
        svc = self.request.services[i]
        if key not in self.cache:
            per_size = self.request.best_by_size[i]
            if not per_size:
                raise unservable(self.request, i)
            cand = [(self.index_of[s], t) for s, t in sorted(per_size.items()) if s in self.index_of]
            sub = self.sub
            self.cache[key] = tuple(
                (i, t) for i, t in cand
                if not any(j < i and sub[i][j] and u.throughput >= t.throughput for j, u in cand)
            )
        if not self.cache[key]:
            raise Unservable(f"model {svc.model}: no admissible triplet fits a layout of {self.gpu.name}")
        return self.cache[key]


def _groups(request: PlanRequest, columns: Sequence[Column]) -> list[Block]:
    """Services with the same profile content, latency SLO and rate (whatever their names), as
    one block each (in first-seen order), without covers yet."""
    table = _OptionTable(request, columns)
    groups: dict[tuple, list[Service]] = {}
    options: dict[tuple, Options] = {}
    for i, svc in enumerate(request.services):
        okey = table.key(svc)
        options[okey] = table.options(i, okey)
        groups.setdefault((okey, svc.rate), []).append(svc)
    return [Block(tuple(m), rate, options[okey]) for (okey, rate), m in groups.items()]


def _with_covers(groups: list[Block]) -> list[Block]:
    """Each group's minimal covers (None when too many to list), enumerated once per distinct
    (rate, option throughputs)."""
    keys: dict[tuple, int] = {}
    for g in groups:
        keys.setdefault((g.rate, tuple(t.throughput for _, t in g.options)), len(keys))
    covers_of = covers_many(list(keys))
    return [
        Block(g.services, g.rate, g.options, covers_of[keys[(g.rate, tuple(t.throughput for _, t in g.options))]])
        for g in groups
    ]


def _cap_covers(groups: list[Block]) -> list[Block]:
    """Keep the program's size bounded: drop the longest cover lists until at most MAX_COVERS
    cover columns remain."""
    total = sum(len(g.covers) for g in groups if g.covers is not None)
    if total <= MAX_COVERS:
        return groups
    lengths = sorted((len(g.covers) for g in groups if g.covers is not None), reverse=True)
    cut, kept = lengths[0] + 1, total
    for n in lengths:
        if kept <= MAX_COVERS:
            break
        kept -= n
        cut = n
    return [g if g.covers is not None and len(g.covers) < cut else replace(g, covers=None) for g in groups]


def build_blocks(request: PlanRequest, columns: Sequence[Column]) -> tuple[Block, ...]:
    """The blocks of the program; a group without covers becomes one y-form block per service.
    `Unservable` when some service has no option."""
    blocks: list[Block] = []
    for g in _cap_covers(_with_covers(_groups(request, columns))):
        if g.covers is not None:
            blocks.append(g)
        else:
            blocks.extend(Block((m,), g.rate, g.options) for m in g.services)
    return tuple(blocks)


def trivial_bound(blocks: Sequence[Block], sizes: tuple[int, ...], slices: int) -> int:
    """The bound while no LP has been solved: GPCs needed over one GPU's. A block with covers
    needs at least its smallest cover's GPCs (a Lagrangian bound with every size priced at its
    share of a GPU, which no layout exceeds); one without, its rate at its most efficient size
    (at least one segment)."""
    gpcs = 0.0
    for b in blocks:
        size = np.array([sizes[i] for i, _ in b.options], dtype=np.float64)
        if b.covers is not None:
            need = float((b.covers @ size).min())
        else:
            eff = max(t.throughput / sizes[i] for i, t in b.options)
            need = max(b.rate / eff, float(size.min()))
        gpcs += len(b.services) * need
    return max(0, math.ceil(gpcs / slices * (1 - 1e-9)))


def option_groups(request: PlanRequest, columns: Sequence[Column]) -> list[Block]:
    """Each group of interchangeable services with its options, without covers (the fleet
    program's per-type options). `Unservable` when some service has no option."""
    return _groups(request, columns)
