"""The solve, in named steps: LP bound, rounded incumbent, capped integer program, conclusion."""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Iterator, Sequence

import numpy as np

from parvagpu.core.model import DeploymentMap
from parvagpu.planning.optimizer.blocks import Problem, build_blocks, trivial_bound
from parvagpu.planning.optimizer.columns import Column, mig_columns
from parvagpu.planning.optimizer.decode import realize
from parvagpu.planning.optimizer.highs import run
from parvagpu.planning.optimizer.program import Model, build_program, dual_bound, round_lp
from parvagpu.planning.request import PlanRequest

# HiGHS's bound may exceed the truth by its feasibility tolerance: allow for it before rounding up.
_BOUND_EPS = 1e-6
_NO_LP = "time limit: no LP solution"


@dataclass(frozen=True)
class OptimizerResult:
    """What the optimizer proved: a plan (None when HiGHS found none in time), the lower bound on
    GPUs for this problem, and whether the plan is proven optimal."""

    plan: DeploymentMap | None
    lower_bound: int
    optimal: bool
    status: str


class _Clock:
    def __init__(self, limit: float) -> None:
        self.deadline = time.perf_counter() + limit

    def left(self) -> float:
        return self.deadline - time.perf_counter()


@dataclass(frozen=True)
class _Lp:
    """The LP relaxation: its program, the Lagrangian bound of its row prices, the reduced costs
    behind that bound, and its primal point."""

    model: Model
    bound: float
    reduced: np.ndarray
    primal: np.ndarray


@dataclass(frozen=True)
class _Capped:
    """The integer program capped below the incumbent: its values (None when it found no plan),
    HiGHS's status name and its dual bound."""

    values: np.ndarray | None
    status: str
    dual_bound: float


def solve(
    request: PlanRequest,
    *,
    time_limit: float | None = None,
    mip_rel_gap: float = 0.0,
    start: DeploymentMap | None = None,
    columns: Sequence[Column] | None = None,
    strategy: str = "optimal",
) -> OptimizerResult:
    """Solve the program of the package docstring within `time_limit` seconds (default: the
    request's), model building included.

    1. The LP relaxation gives row prices; their Lagrangian bound, rounded up, is a proven lower
       bound on GPUs.
    2. Rounding the LP point (nearly integral: a basic solution has at most one fractional block
       per supply row) and re-packing gives an incumbent; `start` (e.g. the heuristic's plan) is a
       second one, so the result is never worse than it.
    3. Unless the incumbent meets the bound (or `mip_rel_gap`), the integer program is solved with
       a cap of one GPU fewer than the incumbent, over the block variables whose reduced cost
       leaves room for such a plan (any other one must be 0 in it). Infeasible means the incumbent
       is optimal.

    `columns` replaces the MIG layouts (the mps-only baseline passes MPS splits). `Unservable`
    when a service has no admissible option.
    """
    clock = _Clock(request.time_limit if time_limit is None else time_limit)
    shared = _shared_for(request) if columns is None else None
    if shared is not None:
        problem, lp = replace(shared.problem, request=request, strategy=strategy), shared.lp
    else:
        columns = tuple(columns) if columns is not None else mig_columns(request.gpu)
        problem, lp = Problem(request, columns, build_blocks(request, columns), strategy), None
    lb = trivial_bound(problem.blocks, request.gpu.sizes, request.gpu.compute_slices)
    best = replace(start, strategy=strategy, lower_bound=None) if start is not None else None
    if not request.services:
        empty = DeploymentMap(request.gpu.name, strategy, request.max_procs, request.gpus_per_node, (), ())
        return _result(empty, lb, "optimal")
    lp = lp if lp is not None else _solve_lp(problem, clock)
    if lp is None:
        return _result(best, lb, _NO_LP)
    lb = max(lb, math.ceil(lp.bound - _BOUND_EPS))
    t0 = time.perf_counter()
    best = _better(best, _realize(problem, lp.model, round_lp(problem.blocks, lp.model, lp.primal), clock))
    realize_s = time.perf_counter() - t0  # decoding the capped program's plan costs about as much
    if best is not None:
        if best.gpus_used <= lb:
            return _result(best, lb, "optimal")
        if (best.gpus_used - lb) / best.gpus_used <= mip_rel_gap:
            return _result(best, lb, "gap reached")
    if clock.left() <= realize_s:
        return _result(best, lb, "time limit")
    target = best.gpus_used - 1 if best is not None else math.inf
    capped = _solve_capped(lp, target, clock, mip_rel_gap, realize_s)
    if capped.values is not None:
        best = _better(best, _realize(problem, lp.model, capped.values, clock))
    return _conclude(best, lb, capped)


@dataclass(frozen=True)
class Relaxation:
    """Step 1 of `solve` alone, for one request: its problem (MIG layouts), the LP relaxation
    (None when it did not end in time) and the proven lower bound on GPUs read from it."""

    problem: Problem
    lp: _Lp | None
    bound: int


def relax(request: PlanRequest, time_limit: float) -> Relaxation:
    """The LP relaxation of `request` within `time_limit` seconds (abandoned at the limit) and its
    bound: the LP's Lagrangian bound rounded up, or the trivial GPC bound when the LP does not end
    in time. `Unservable` when a service has no admissible option."""
    clock = _Clock(time_limit)
    columns = mig_columns(request.gpu)
    problem = Problem(request, columns, build_blocks(request, columns), "optimal")
    lb = trivial_bound(problem.blocks, request.gpu.sizes, request.gpu.compute_slices)
    lp = _solve_lp(problem, clock, hard=True) if request.services else None
    return Relaxation(problem, lp, lb if lp is None else max(lb, math.ceil(lp.bound - _BOUND_EPS)))


def lower_bound(request: PlanRequest, time_limit: float) -> int:
    """A proven lower bound on the GPUs of any plan of `request` (`relax`'s)."""
    return relax(request, time_limit).bound


# The relaxation `solve` may take instead of solving the LP again, set only inside `sharing`: the
# re-plan solves the LP for its bound, then asks a strategy (which calls `solve`) for a fresh plan
# of the same request. One entry, for the extent of that call, used only for an equal request.
_SHARED: ContextVar[Relaxation | None] = ContextVar("parvagpu_shared_relaxation", default=None)


@contextmanager
def sharing(relaxation: Relaxation) -> Iterator[None]:
    """Within this block, `solve` of a request equal to the relaxation's (the time limit aside,
    MIG layouts) starts from its LP instead of solving it again."""
    token = _SHARED.set(relaxation)
    try:
        yield
    finally:
        _SHARED.reset(token)


def has_shared_lp(request: PlanRequest) -> bool:
    """Whether `solve` of this request would start from a shared, solved LP (inside `sharing`)."""
    return _shared_for(request) is not None


def _shared_for(request: PlanRequest) -> Relaxation | None:
    shared = _SHARED.get()
    if shared is None or shared.lp is None:
        return None
    mine = shared.problem.request
    same = (mine.services == request.services and mine.gpu == request.gpu and mine.max_procs == request.max_procs
            and mine.gpus_per_node == request.gpus_per_node
            and (mine.profiles is request.profiles or mine.profiles == request.profiles))
    return shared if same else None


def _solve_lp(problem: Problem, clock: _Clock, hard: bool = False) -> _Lp | None:
    """Build the program and solve its LP relaxation; None when the clock ran out first. The
    phases before the solver cannot be interrupted: the clock is checked between them. `hard`:
    the solve is abandoned at the limit even where HiGHS checks no callback (`highs.run_by`)."""
    if clock.left() <= 0:
        return None
    model = build_program(problem.blocks, problem.columns, len(problem.request.gpu.sizes))
    if clock.left() <= 0:
        return None
    h, ok = run(model.cost, model.upper, model.row_lo, model.row_hi, model.cols, model.rows,
                model.vals, integer=False, time_limit=clock.left(), hard=hard)
    if not ok or h.getModelStatus().name != "kOptimal":
        return None
    sol = h.getSolution()
    bound, reduced = dual_bound(model, np.asarray(sol.row_dual))
    return _Lp(model, bound, reduced, np.asarray(sol.col_value))


def _solve_capped(lp: _Lp, target: float, clock: _Clock, mip_rel_gap: float, reserve: float = 0.0) -> _Capped:
    """The integer program with at most `target` GPUs, over the block variables whose reduced cost
    leaves room for such a plan: any other one is 0 in every plan of at most `target` GPUs. It
    stops `reserve` seconds before the clock's limit, to decode its plan in time, and is
    abandoned there if HiGHS is still in a phase that does not check the time."""
    model = lp.model
    keep = np.ones(model.ncol, dtype=bool)
    keep[: model.nvar] = lp.reduced[: model.nvar] <= target - lp.bound + 1e-7
    new_id = np.cumsum(keep) - 1
    mask = keep[model.cols]
    xs = np.arange(model.nvar, model.ncol)
    h, ok = run(
        model.cost[keep], model.upper[keep],
        np.append(model.row_lo, -np.inf), np.append(model.row_hi, float(target)),
        np.concatenate([new_id[model.cols[mask]], new_id[xs]]),
        np.concatenate([model.rows[mask], np.full(len(xs), len(model.row_lo))]),
        np.concatenate([model.vals[mask], np.ones(len(xs))]),
        integer=True, time_limit=max(clock.left() - reserve, 1e-3), mip_rel_gap=mip_rel_gap, hard=True,
    )
    if h is None:  # abandoned at the limit (the root's cut rounds check no callback)
        return _Capped(None, "time limit", -math.inf)
    values = None
    if ok:
        values = np.zeros(model.ncol)
        values[keep] = np.asarray(h.getSolution().col_value)
    return _Capped(values, h.getModelStatus().name, h.getInfo().mip_dual_bound)


def _conclude(best: DeploymentMap | None, lb: int, capped: _Capped) -> OptimizerResult:
    if best is None:
        return _result(None, lb, "time limit")
    if capped.status == "kInfeasible":  # no plan with fewer GPUs than the incumbent
        return _result(best, best.gpus_used, "optimal")
    # A better plan would lie among the kept variables, so the capped program's bound holds for it.
    if math.isfinite(capped.dual_bound):
        lb = max(lb, min(best.gpus_used, math.ceil(capped.dual_bound - _BOUND_EPS)))
    if best.gpus_used <= lb:
        return _result(best, lb, "optimal")
    return _result(best, lb, "gap reached" if capped.status == "kOptimal" else "time limit")


def _realize(problem: Problem, model: Model, values: np.ndarray, clock: _Clock) -> DeploymentMap | None:
    return realize(problem, model.offsets, values, max(0.5, clock.left()))


def _better(best: DeploymentMap | None, plan: DeploymentMap | None) -> DeploymentMap | None:
    """The plan with fewer GPUs, then fewer GPCs; the incumbent on a tie."""
    if plan is not None and (
        best is None or (plan.gpus_used, plan.gpcs_used()) < (best.gpus_used, best.gpcs_used())
    ):
        return plan
    return best


def _result(best: DeploymentMap | None, lb: int, status: str) -> OptimizerResult:
    if best is None:
        return OptimizerResult(None, lb, False, status)
    bound = min(lb, best.gpus_used)
    return OptimizerResult(replace(best, lower_bound=bound), bound, best.gpus_used == bound, status)
