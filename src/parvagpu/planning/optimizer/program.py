"""The integer program in coordinate form (block variables, then one x per layout), its Lagrangian
bound from row prices, and the rounding of an LP point to an integer one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from parvagpu.planning.optimizer.blocks import Block
from parvagpu.planning.optimizer.columns import Column


@dataclass
class Model:
    """The program in coordinate form; block variables first (per block from `offsets`), then one
    x per layout."""

    offsets: list[int]
    nvar: int
    cols: np.ndarray
    rows: np.ndarray
    vals: np.ndarray
    cost: np.ndarray
    upper: np.ndarray
    row_lo: np.ndarray
    row_hi: np.ndarray

    @property
    def ncol(self) -> int:
        return len(self.cost)


def build_program(blocks: Sequence[Block], columns: Sequence[Column], nsz: int) -> Model:
    """The program's matrix: per block its variables (covers or direct y) and demand row, then one
    x per layout. Cover blocks are laid out for all blocks at once."""
    M = len(blocks)
    width = [len(b.covers) if b.covers is not None else len(b.options) for b in blocks]
    offsets = np.concatenate(([0], np.cumsum(width, dtype=np.int64)))
    nvar = int(offsets[-1])
    row_lo = np.full(M + nsz, -np.inf)
    row_hi = np.zeros(M + nsz)
    upper = np.zeros(nvar + len(columns))
    parts = [_cover_entries(blocks, offsets, nsz, row_lo, row_hi, upper),
             _direct_entries(blocks, offsets, row_lo, row_hi, upper), _layout_entries(columns, nvar, M)]
    cols, rows, vals = (np.concatenate([p[k] for p in parts]) for k in range(3))
    upper[nvar:] = max(_max_gpus(blocks, nsz), 1.0)
    cost = np.zeros(nvar + len(columns))
    cost[nvar:] = 1.0
    return Model(offsets[:-1].tolist(), nvar, cols.astype(np.int64), rows.astype(np.int64), vals,
                 cost, upper, row_lo, row_hi)


def _cover_matrix(blocks: Sequence[Block], nsz: int) -> tuple[np.ndarray, np.ndarray]:
    """Every cover of every cover block as a row of counts per size (all sizes), and its block."""
    idx = [b_i for b_i, b in enumerate(blocks) if b.covers is not None]
    if not idx:
        return np.zeros((0, nsz)), np.zeros(0, dtype=np.int64)
    full = []
    for b_i in idx:
        b = blocks[b_i]
        f = np.zeros((len(b.covers), nsz))
        f[:, [k for k, _ in b.options]] = b.covers
        full.append(f)
    return np.concatenate(full), np.repeat(idx, [len(f) for f in full])


def _cover_entries(blocks, offsets, nsz, row_lo, row_hi, upper):
    """z[m,k]: one demand-row entry, then one supply-row entry per size the cover uses (in size
    order, as HiGHS is given them column by column)."""
    F, block = _cover_matrix(blocks, nsz)
    M = len(blocks)
    n = np.array([len(b.services) for b in blocks], dtype=np.float64)
    row_lo[block] = row_hi[block] = n[block]
    start = np.concatenate(([0], np.flatnonzero(np.diff(block)) + 1)) if len(block) else block
    var = offsets[block] + np.arange(len(block)) - np.repeat(start, np.diff(np.append(start, len(block))))
    upper[var] = n[block]
    o, s = np.nonzero(F)
    return (np.concatenate([var, var[o]]), np.concatenate([block, M + s]),
            np.concatenate([np.ones(len(var)), F[o, s]]))


def _direct_entries(blocks, offsets, row_lo, row_hi, upper):
    """y[m,s] for blocks without covers: demand row in req/s, then the supply rows."""
    cols, rows, vals = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0)]
    M = len(blocks)
    for b_i, b in enumerate(blocks):
        if b.covers is not None:
            continue
        ts = np.array([t.throughput for _, t in b.options])
        k = len(ts)
        var = np.arange(offsets[b_i], offsets[b_i] + k)
        # In req/s, not normalised: HiGHS's absolute feasibility tolerance (1e-6) then lets a
        # plan fall short by 1e-6 req/s at most, below the 0.001 resolution of profiled
        # throughputs, instead of 1e-6 of the rate.
        row_lo[b_i], row_hi[b_i] = b.rate, np.inf
        cols += [var, var]
        rows += [np.full(k, b_i), M + np.array([j for j, _ in b.options])]
        vals += [ts, np.ones(k)]
        upper[var] = np.ceil(b.rate / ts)
    return np.concatenate(cols), np.concatenate(rows), np.concatenate(vals)


def _layout_entries(columns, nvar, M):
    ent = [(nvar + c_i, M + k, -float(a)) for c_i, c in enumerate(columns) for k, a in enumerate(c.counts) if a]
    c, r, v = zip(*ent) if ent else ((), (), ())
    return np.array(c, dtype=np.int64), np.array(r, dtype=np.int64), np.array(v, dtype=np.float64)


def _max_gpus(blocks: Sequence[Block], nsz: int) -> float:
    """An upper bound on useful GPUs per layout: every service on its fewest segments, one GPU each."""
    total = 0.0
    for b in blocks:
        if b.covers is not None:
            total += len(b.services) * float(b.covers.sum(axis=1).min())
        else:
            total += float(np.ceil(b.rate / np.array([t.throughput for _, t in b.options])).min())
    return total


def dual_bound(model: Model, row_dual: np.ndarray) -> tuple[float, np.ndarray]:
    """The Lagrangian bound of any row prices, and the reduced costs behind it.

    Computed here rather than taken from the solver: with prices of the wrong sign zeroed it is a
    valid lower bound whatever the LP's tolerances, and it justifies the column fixing below."""
    pi = np.array(row_dual, dtype=np.float64)
    pi[(pi > 0) & ~np.isfinite(model.row_lo)] = 0.0
    pi[(pi < 0) & ~np.isfinite(model.row_hi)] = 0.0
    d = model.cost - np.bincount(model.cols, weights=model.vals * pi[model.rows], minlength=model.ncol)
    rows_part = np.where(pi > 0, pi * np.where(np.isfinite(model.row_lo), model.row_lo, 0.0),
                         pi * np.where(np.isfinite(model.row_hi), model.row_hi, 0.0)).sum()
    cols_part = np.where(d < 0, d * model.upper, 0.0).sum()
    return float(rows_part + cols_part), d


def round_lp(blocks: Sequence[Block], model: Model, primal: np.ndarray) -> np.ndarray:
    """An integer point from the LP solution: covers by largest remainder, y rounded up."""
    out = np.zeros(model.nvar)
    for b_i, b in enumerate(blocks):
        off = model.offsets[b_i]
        if b.covers is not None:
            z = np.clip(primal[off:off + len(b.covers)], 0.0, None)
            n = len(b.services)
            base = np.floor(z + 1e-9)
            extra = n - int(base.sum())
            if extra > 0:
                frac = z - base
                for o in np.argsort(-frac, kind="stable")[:extra]:
                    base[o] += 1
            elif extra < 0:
                for o in np.nonzero(base)[0][::-1][: -extra]:
                    base[o] -= 1
            out[off:off + len(b.covers)] = base
        else:
            k = len(b.options)
            out[off:off + k] = np.ceil(primal[off:off + k] - 1e-9)
    return out
