"""The GPU layouts of the program: one column per maximal set of legal placements (MIG), or per
MPS split of a whole GPU."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product
from typing import Sequence

from parvagpu.core.gpus import GpuType


@dataclass(frozen=True)
class Column:
    """One GPU layout: instance counts per size (aligned with `GpuType.sizes`) and concrete legal
    (size, start) placements realising them."""

    counts: tuple[int, ...]
    placements: tuple[tuple[int, int], ...]


def _maximal(vectors: set[tuple[int, ...]]) -> list[tuple[int, ...]]:
    return [
        v for v in vectors
        if not any(w != v and all(a <= b for a, b in zip(v, w)) for w in vectors)
    ]


def _columns(gpu: GpuType, vectors: set[tuple[int, ...]]) -> tuple[Column, ...]:
    sizes = gpu.sizes
    out = []
    # Larger instances first: decoded GPUs then read like the heuristic's (big slots first).
    for v in sorted(_maximal(vectors), key=lambda v: tuple(-c for c in reversed(v))):
        multiset = tuple(s for s, c in zip(sizes, v) for _ in range(c))
        placed = gpu.pack(multiset)
        if placed is not None:
            out.append(Column(v, tuple(sorted(placed, key=lambda p: p[1]))))
    return tuple(out)


def mig_columns(gpu: GpuType) -> tuple[Column, ...]:
    """Maximal MIG layouts, enumerated from the GPU type's placement table."""
    sizes = gpu.sizes
    vectors = {tuple(sum(1 for s, _ in lay if s == z) for z in sizes) for lay in gpu.layouts()}
    return _columns(gpu, vectors)


def mps_columns(gpu: GpuType, max_parts: int = 2) -> tuple[Column, ...]:
    """Maximal ways to split one whole GPU into at most `max_parts` MPS partitions whose sizes are
    profiled instance sizes summing to at most the GPU's compute slices. Placements only number the
    partitions; a split with no MIG-legal placement on this GPU type is left out."""
    sizes = gpu.sizes
    vectors = set()
    for k in range(1, max_parts + 1):
        for combo in product(range(len(sizes)), repeat=k):
            if sum(sizes[i] for i in combo) <= gpu.compute_slices:
                v = [0] * len(sizes)
                for i in combo:
                    v[i] += 1
                vectors.add(tuple(v))
    return _columns(gpu, vectors)


def substitutes(columns: Sequence[Column], n: int) -> list[list[bool]]:
    """sub[i][j]: in every layout a size-i instance can be replaced by a size-j one."""
    sub = [[i == j for j in range(n)] for i in range(n)]
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            ok = True
            for c in columns:
                if c.counts[i] == 0:
                    continue
                v = list(c.counts)
                v[i] -= 1
                v[j] += 1
                if not any(all(a <= b for a, b in zip(v, d.counts)) for d in columns):
                    ok = False
                    break
            sub[i][j] = ok
    return sub
