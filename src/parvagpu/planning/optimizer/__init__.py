"""Exact planner: segment choice and MIG packing as one pattern integer program, solved by HiGHS.

The paper's heuristic fixes each model's segments first (configurator) and packs them afterwards
(allocator), so it can miss plans that need another mix of segment sizes to pack tightly. Here both
decisions are one integer program: Gilmore-Gomory patterns for the GPUs, and for each model a
choice among its minimal covers (a Dantzig-Wolfe reformulation of its demand row).

Data
    M          services, S the instance sizes of the GPU type, lambda[m] the requested rates.
    T[m,s]     throughput of the best admissible triplet of model m with size s (the configurator's
               rule: batch latency < 0.45 L_m, procs <= max_procs). It dominates every other triplet
               of its size (same slots, at least the throughput), so one per (model, size) is
               enough. A size is dropped when a smaller size has at least its throughput and can
               take its place in every layout.
    C          GPU layouts: the count vectors a[c,s] of every set of legal, non-overlapping
               placements from `GpuType.layouts()`, keeping only the maximal ones (layouts are
               closed under removing instances, so the "<=" of the supply rows loses nothing).
    K[m]       minimal covers of m: vectors k over its sizes with sum_s T[m,s] k[s] >= lambda[m]
               from which no segment can be dropped.

Variables
    x[c]   in Z>=0     GPUs that use layout c
    z[m,k] in Z>=0     services of m's block that use cover k (a block is one service, or n[m]
                       interchangeable services with the same profile points, latency and rate)

Model
    minimise    sum_c x[c]
    subject to  sum_k z[m,k] = n[m]                                   for every block m
                sum_m sum_k k[s] z[m,k] - sum_c a[c,s] x[c] <= 0      for every size s

A block whose covers are too many to list (a rate far above its segments' throughputs) keeps the
direct variables y[m,s] in Z>=0 with the demand row sum_s T[m,s] y[m,s] >= lambda[m] and
y[m,s] in the supply rows instead; the two forms mix freely. The cover form is preferred because
its LP relaxation is the convex hull of each model's integer choices: with y alone every model may
buy a fraction of a segment, and at 1,000 services HiGHS still had a 3-GPU gap after 60 s, where the
cover form is proven optimal in well under a second.

Symmetry: layout counts x carry no GPU identity, and identical services share one block, so no two
solutions differ only by a permutation.

The matrix goes to HiGHS as sparse numpy arrays (`passModel`), single-threaded with a fixed seed:
the same inputs give the same plan whenever the solve ends before the time limit. `solve` lists the
steps (LP bound, rounding, a capped integer program over the columns reduced costs leave open); the
proven lower bound is the LP's Lagrangian bound rounded up, raised by the capped program. Decoding
gives every GPU its layout's concrete placements and fills each size-s slot with a size-s segment;
segments a model does not need are dropped first, and the tiny packing problem (segments fixed) is
re-solved so the GPU count matches the final segments.

The steps, one module each: `columns` (layouts), `covers` (minimal covers), `blocks` (services
grouped, their options and covers), `program` (the matrix, its Lagrangian bound, rounding),
`highs` (the solver; `highspy` is imported on the first solve, never at package import),
`decode` (values to a placed plan) and `search` (`solve`: the steps in order, within the time limit).
"""

from parvagpu.planning.optimizer.columns import Column, mig_columns, mps_columns
from parvagpu.planning.optimizer.covers import minimal_covers
from parvagpu.planning.optimizer.search import OptimizerResult, solve

__all__ = ["Column", "OptimizerResult", "mig_columns", "minimal_covers", "mps_columns", "solve"]
