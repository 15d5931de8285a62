"""Bounds on every number an input may hold, so no input can overflow a sum or exhaust memory.

Far beyond any real deployment (an H100 serves well under 10^6 requests/s per model), yet small
enough that sums over 10^5 services stay finite and a batch or process count cannot allocate
without limit.
"""

from __future__ import annotations

MAX_RATE = 1e9  # requests/s of one service
MAX_LATENCY_MS = 1e7  # a latency SLO or a batch latency, ms (about 2.8 hours)
MAX_THROUGHPUT = 1e9  # items/s of one profiled point or segment
MAX_BATCH = 65_536
MAX_PROCS = 1_024  # MPS processes per segment (MPS itself allows 48 clients per GPU)
MAX_GPUS_PER_NODE = 1_024
MAX_NODES = 100_000
