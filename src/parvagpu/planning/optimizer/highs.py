"""HiGHS, the one solver: a program in coordinate form in, the solved HiGHS object out.

`highspy` is imported on the first solve, never at package import.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from parvagpu.planning.optimizer.columns import Column


def _highs():
    import highspy

    # The bare binding: the Python wrapper prints a banner on stdout when first constructed.
    cls = getattr(highspy, "_Highs", None) or highspy.Highs
    h = cls()
    for key, val in (
        ("output_flag", False), ("log_to_console", False), ("threads", 1), ("random_seed", 0),
    ):
        h.setOptionValue(key, val)
    return h


def run_within(h, time_limit: float) -> None:
    """`h.run()`, interrupted at the time limit wherever HiGHS asks its callbacks (simplex
    iterations, MIP root cut rounds and nodes): its own time check misses the root's cut rounds,
    which on large programs ran for minutes past the limit."""
    import time

    import highspy

    deadline = time.perf_counter() + max(float(time_limit), 1e-3)

    def stop(_kind, _message, _out, data_in, _user) -> None:
        if time.perf_counter() > deadline:
            data_in.user_interrupt = True

    kinds = (highspy.cb.HighsCallbackType.kCallbackSimplexInterrupt,
             highspy.cb.HighsCallbackType.kCallbackMipInterrupt)
    h.setCallback(stop, None)
    for kind in kinds:
        h.startCallback(kind)
    h.run()
    for kind in kinds:
        h.stopCallback(kind)


def run_by(h, deadline: float) -> bool:
    """`run_within` up to `deadline` (a `time.perf_counter()` instant) in a daemon thread, waited
    for until then (plus a small grace): True when it ended. Some root phases of HiGHS (cut
    separation) call no callback for seconds; a solve still running at the deadline is left to
    stop at its next check, its object unread, so the caller keeps its own deadline."""
    import threading
    import time

    done = threading.Event()

    def solve() -> None:
        try:
            run_within(h, deadline - time.perf_counter())
        finally:
            done.set()

    # A daemon, so that a long-running caller (the controller) need not wait for it; at exit it
    # is waited for (`_wait_abandoned`).
    thread = threading.Thread(target=solve, daemon=True)
    thread.start()
    if done.wait(max(0.0, deadline - time.perf_counter()) + _GRACE_S):
        return True
    _abandon(thread)
    return False


_GRACE_S = 0.05  # seconds past the deadline a solve may take to reach its interrupt check
_EXIT_WAIT_S = 30.0  # the most the process waits at exit for abandoned solves to reach a check
_abandoned: list = []  # solve threads left running past their deadline


def _abandon(thread) -> None:
    import atexit

    if not _abandoned:
        atexit.register(_wait_abandoned)
    _abandoned[:] = [t for t in _abandoned if t.is_alive()] + [thread]


def _wait_abandoned() -> None:
    """Wait (bounded) for abandoned solves before the interpreter finalises. An abandoned solve
    still calls its Python interrupt callback; a daemon thread that does so after finalisation
    began is ended by `pthread_exit` through HiGHS's C++ frames, which aborts the process
    ("terminate called without an active exception", exit 134) after it wrote its output. The
    callback interrupts at once, so the wait lasts until HiGHS's next check (about a second)."""
    import time

    end = time.monotonic() + _EXIT_WAIT_S
    for thread in _abandoned:
        thread.join(max(0.0, end - time.monotonic()))


def _csc(cols: np.ndarray, rows: np.ndarray, vals: np.ndarray, ncol: int):
    order = np.argsort(cols, kind="stable")
    starts = np.zeros(ncol + 1, dtype=np.int32)
    np.cumsum(np.bincount(cols, minlength=ncol), out=starts[1:])
    return starts, rows[order].astype(np.int32), vals[order]


def run(
    cost, upper, row_lo, row_hi, cols, rows, vals, *, integer: bool, time_limit: float,
    mip_rel_gap: float = 0.0, mip_abs_gap: float = 1.0 - 1e-6, continuous: Sequence[int] = (),
    start=None, hard: bool = False,
):
    """One HiGHS solve of min cost.x, row_lo <= A x <= row_hi, 0 <= x <= upper (x integer, but for
    the `continuous` columns, when `integer`); returns (highs, feasible). `start`: a feasible x
    HiGHS takes as its first incumbent (ignored by HiGHS when it is not feasible). `hard`: a solve
    still running at the limit is abandoned (`run_by`): (None, False)."""
    h = _highs()
    h.setOptionValue("time_limit", max(float(time_limit), 1e-3))
    if integer:
        h.setOptionValue("mip_rel_gap", float(mip_rel_gap))
        h.setOptionValue("mip_abs_gap", float(mip_abs_gap))  # default: the objective is integral
        # The incumbent is known and the layouts carry no GPU identity: the feasibility-jump
        # heuristic and symmetry detection only cost time (seconds on 10^5 columns, unchecked
        # against the time limit).
        h.setOptionValue("mip_heuristic_run_feasibility_jump", False)
        h.setOptionValue("mip_detect_symmetry", False)
    # Presolve finds little to remove in these programs and, on 10^5 columns, costs more than the
    # LP itself (2-3x) and than the capped MIP; it also runs without time checks.
    h.setOptionValue("presolve", "off")
    ncol = len(cost)
    starts, index, value = _csc(cols, rows, vals, ncol)
    h.passModel(
        ncol, len(row_lo), len(value), 1, 1, 0.0,
        np.asarray(cost, dtype=np.float64), np.zeros(ncol), np.asarray(upper, dtype=np.float64),
        np.asarray(row_lo, dtype=np.float64), np.asarray(row_hi, dtype=np.float64),
        starts, index, np.asarray(value, dtype=np.float64),
        _integrality(ncol, integer, continuous),
    )
    if start is not None:
        h.setSolution(ncol, np.arange(ncol, dtype=np.int32), np.asarray(start, dtype=np.float64))
    if hard:
        import time

        if not run_by(h, time.perf_counter() + max(float(time_limit), 1e-3)):
            return None, False  # still running: nothing of it may be read
    else:
        run_within(h, time_limit)
    return h, h.getInfo().primal_solution_status == 2  # kSolutionStatusFeasible


def _integrality(ncol: int, integer: bool, continuous: Sequence[int]) -> np.ndarray:
    kinds = np.full(ncol, 1 if integer else 0, dtype=np.int32)
    kinds[list(continuous)] = 0
    return kinds


def pack(demand: Sequence[int], columns: Sequence[Column], time_limit: float):
    """Fewest layouts covering `demand` instances per size (the packing problem, y fixed)."""
    cols, rows, vals = [], [], []
    for c_i, c in enumerate(columns):
        for k, a in enumerate(c.counts):
            if a:
                cols.append(c_i)
                rows.append(k)
                vals.append(float(a))
    n = len(columns)
    h, ok = run(
        np.ones(n), np.full(n, float(sum(demand))), np.asarray(demand, dtype=float),
        np.full(len(demand), np.inf), np.array(cols), np.array(rows), np.array(vals, dtype=float),
        integer=True, time_limit=time_limit,
    )
    if not ok:  # only on a time-out: one GPU per instance always fits
        return None
    return np.round(np.asarray(h.getSolution().col_value)).astype(np.int64)
