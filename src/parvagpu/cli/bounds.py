"""Bounds of the numeric options: a value outside is one error line (exit 2), never an overflow, an
endless run or an allocation the machine cannot hold."""

from __future__ import annotations

from parvagpu.core.errors import ParvaError

SEED_MAX = 2**32 - 1
MAX_PROCS = 48  # MPS serves at most 48 client processes per device
MAX_GPUS_PER_NODE = 64
MAX_FAKE_GPUS = 64
MAX_TIME_LIMIT_S = 86_400.0
MAX_RATE_SCALE = 1e6


def _show(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


def in_range(option: str, value: float, low: float, high: float, *, open_low: bool = False) -> None:
    """`value` must lie in [low, high] ((low, high] with `open_low`); NaN never does."""
    ok = (low < value if open_low else low <= value) and value <= high
    if not ok:
        want = f"> {_show(low)} and <= {_show(high)}" if open_low else f"from {_show(low)} to {_show(high)}"
        raise ParvaError(f"{option} must be {want}, got {_show(value)}")


def seed(value: int) -> None:
    in_range("--seed", value, 0, SEED_MAX)


def planning(max_procs: int, time_limit: float, gpus_per_node: int) -> None:
    in_range("--max-procs", max_procs, 1, MAX_PROCS)
    in_range("--time-limit", time_limit, 0, MAX_TIME_LIMIT_S, open_low=True)
    in_range("--gpus-per-node", gpus_per_node, 1, MAX_GPUS_PER_NODE)
