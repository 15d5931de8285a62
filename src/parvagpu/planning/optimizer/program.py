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
    M = len(blocks)
    cols, rows, vals, upper, offsets = [], [], [], [], []
    row_lo = np.full(M + nsz, -np.inf)
    row_hi = np.zeros(M + nsz)
    nvar = 0
    max_gpus = 0.0
    for b_i, b in enumerate(blocks):
        offsets.append(nvar)
        sidx = np.array([k for k, _ in b.options])
        n = len(b.services)
        if b.covers is not None:
            cov = b.covers
            nc = len(cov)
            row_lo[b_i] = row_hi[b_i] = n
            o, j = np.nonzero(cov)
            cols += [np.arange(nvar, nvar + nc), nvar + o]
            rows += [np.full(nc, b_i), M + sidx[j]]
            vals += [np.ones(nc), cov[o, j].astype(np.float64)]
            upper.append(np.full(nc, float(n)))
            max_gpus += n * float(cov.sum(axis=1).min())
            nvar += nc
        else:
            ts = np.array([t.throughput for _, t in b.options])
            k = len(ts)
            # In req/s, not normalised: HiGHS's absolute feasibility tolerance (1e-6) then lets a
            # plan fall short by 1e-6 req/s at most, below the 0.001 resolution of profiled
            # throughputs, instead of 1e-6 of the rate.
            row_lo[b_i], row_hi[b_i] = b.rate, np.inf
            cols += [np.arange(nvar, nvar + k)] * 2
            rows += [np.full(k, b_i), M + sidx]
            vals += [ts, np.ones(k)]
            ub = np.ceil(b.rate / ts)
            upper.append(ub)
            max_gpus += float(ub.min())
            nvar += k
    for c_i, c in enumerate(columns):
        for k, a in enumerate(c.counts):
            if a:
                cols.append(np.array([nvar + c_i]))
                rows.append(np.array([M + k]))
                vals.append(np.array([-float(a)]))
    upper.append(np.full(len(columns), max(max_gpus, 1.0)))
    cost = np.zeros(nvar + len(columns))
    cost[nvar:] = 1.0
    return Model(
        offsets, nvar, np.concatenate(cols).astype(np.int64), np.concatenate(rows).astype(np.int64),
        np.concatenate(vals), cost, np.concatenate(upper), row_lo, row_hi,
    )


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
