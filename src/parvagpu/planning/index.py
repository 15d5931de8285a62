"""The admissible-triplet index of a whole request, built once and vectorised.

For every distinct profile content (not name: copies under many model names share one entry) and
every instance size, the usable points (runnable, `procs <= max_procs`, a size the GPU type offers)
are sorted by latency, and the best point of every prefix is kept: the highest segment throughput,
then the smallest batch, then the fewest processes. A service's best triplet of a size is then the
best of the prefix of points faster than its admission threshold, found by binary search for all
services and sizes at once.

The admission test (batch latency < 0.45 x the latency SLO) is exact: float comparisons decide
every point farther than a relative 1e-9 from a threshold, and the few nearer ones are compared in
rational arithmetic on the decimal values the files hold.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence

import numpy as np

from parvagpu.core.gpus import GpuType
from parvagpu.core.model import Profile, Service, Triplet

ADMISSION = Fraction(9, 20)  # 0.45: latency per batch must be < 0.45 * SLO
_NEAR = 1e-9  # relative distance below which a latency is compared with its threshold exactly


def threshold_ms(latency_slo_ms: Fraction) -> Fraction:
    return ADMISSION * latency_slo_ms


@dataclass(frozen=True, eq=False)
class TripletIndex:
    """Usable points of the distinct profiles, grouped by (profile, size) and sorted by latency."""

    sizes: tuple[int, ...]
    profile_of: dict[bytes, int]  # content key -> profile number
    size: np.ndarray  # per usable point
    batch: np.ndarray
    procs: np.ndarray
    throughput: np.ndarray  # segment throughput: procs x per-process
    latency_s: np.ndarray
    group_of: np.ndarray  # profile * len(sizes) + size index -> group, or -1
    start: np.ndarray  # group -> first position in the sorted arrays (and one past the last)
    lat_sorted: np.ndarray  # latencies of the sorted positions
    keys: np.ndarray  # group x (len(uniq) + 1) + latency rank, sorted
    uniq: np.ndarray  # distinct latencies, ascending
    best: np.ndarray  # sorted position -> best point of its group's prefix up to it
    fastest_s: np.ndarray  # profile -> lowest usable latency (inf when none)

    @classmethod
    def build(cls, profiles: Sequence[Profile], gpu: GpuType, max_procs: int) -> TripletIndex:
        profile_of: dict[bytes, int] = {}
        columns = []
        for p in profiles:
            if p.content_key not in profile_of:
                profile_of[p.content_key] = len(columns)
                columns.append(p.columns)
        pid = np.repeat(np.arange(len(columns)), [len(c) for c in columns])

        def cat(name: str, dtype) -> np.ndarray:
            parts = [getattr(c, name) for c in columns]
            return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)

        size, batch, procs = cat("size", np.int64), cat("batch", np.int64), cat("procs", np.int64)
        thr, lat = cat("throughput", np.float64), cat("latency_s", np.float64)
        sizes = np.array(gpu.sizes, dtype=np.int64)
        offered = np.zeros(int(sizes.max()) + 2, dtype=bool)
        offered[sizes] = True
        usable = (thr > 0) & (procs <= max_procs) & offered[np.clip(size, 0, len(offered) - 1)]
        pid, size, batch, procs, lat = pid[usable], size[usable], batch[usable], procs[usable], lat[usable]
        seg = procs.astype(np.float64) * thr[usable]
        gkey = pid * len(sizes) + np.searchsorted(sizes, size)
        return cls._sorted(tuple(gpu.sizes), profile_of, len(columns), size, batch, procs, seg, lat, gkey, pid)

    @classmethod
    def _sorted(cls, sizes, profile_of, n_profiles, size, batch, procs, seg, lat, gkey, pid) -> TripletIndex:
        row = np.arange(len(size))
        order = np.lexsort((row, lat, gkey))  # by group, then latency, then file order
        g_sorted = gkey[order]
        first = np.flatnonzero(np.r_[True, g_sorted[1:] != g_sorted[:-1]]) if len(order) else row[:0]
        start = np.append(first, len(order))
        group_of = np.full(n_profiles * len(sizes), -1, dtype=np.int64)
        group_of[g_sorted[first]] = np.arange(len(first))
        gid = group_of[g_sorted]
        # Rank of every point within its group, best first; ties in full go to the faster, earlier.
        better = np.lexsort((row, lat, procs, batch, -seg, gkey))
        rank = np.empty(len(order), dtype=np.int64)
        rank[better] = np.arange(len(order)) - start[group_of[gkey[better]]]
        # Running best along each group's latency order: groups never mix, as later groups' values
        # are larger than any earlier group's.
        m = int(np.diff(start).max(initial=0)) + 1
        run = np.maximum.accumulate(gid * m + (m - 1 - rank[order])) if len(order) else gid
        best = better[start[gid] + (m - 1 - (run - gid * m))]
        uniq, inv = np.unique(lat[order], return_inverse=True)
        fastest = np.full(n_profiles, np.inf)
        np.minimum.at(fastest, pid, lat)
        return cls(
            sizes, profile_of, size, batch, procs, seg, lat, group_of, start, lat[order],
            gid * (len(uniq) + 1) + inv, uniq, best, fastest,
        )

    def _count_below(self, gid: np.ndarray, t: np.ndarray) -> np.ndarray:
        """How many points of each group have latency < t (seconds)."""
        q = gid * (len(self.uniq) + 1) + np.searchsorted(self.uniq, t, "left")
        return np.searchsorted(self.keys, q, "left") - self.start[gid]

    def best_by_size(self, profiles: Sequence[Profile], services: Sequence[Service]) -> list[dict[int, Triplet]]:
        """For each service (its profile alongside), the max-throughput admissible triplet of
        every size that has one, in size order."""
        n, ns = len(services), len(self.sizes)
        pid = np.array([self.profile_of[p.content_key] for p in profiles], dtype=np.int64)
        slo = np.array([float(s.latency_ms) for s in services], dtype=np.float64)
        gid = self.group_of[(pid[:, None] * ns + np.arange(ns)).reshape(n, ns)] if n else np.zeros((0, ns), np.int64)
        has = gid >= 0
        g = gid[has]
        t = np.repeat(slo * 0.45 / 1000.0, ns).reshape(n, ns)[has]
        lo, hi = self._count_below(g, t * (1 - _NEAR)), self._count_below(g, t * (1 + _NEAR))
        near = np.flatnonzero(lo != hi)
        if len(near):
            svc = np.repeat(np.arange(n), ns).reshape(n, ns)[has]
            for j in near:  # rare: a latency within 1e-9 of the threshold
                lo[j] += self._exact_extra(int(g[j]), int(lo[j]), int(hi[j]), services[svc[j]])
        k = np.zeros((n, ns), dtype=np.int64)
        k[has] = lo
        point = np.full((n, ns), -1, dtype=np.int64)
        ok = k > 0
        point[ok] = self.best[self.start[gid[ok]] + k[ok] - 1]
        made = self._triplets(np.unique(point[ok]))
        sizes = self.sizes
        return [{sizes[s_i]: made[pt] for s_i, pt in enumerate(row) if pt >= 0} for row in point.tolist()]

    def _triplets(self, points: np.ndarray) -> dict[int, Triplet]:
        cols = (self.size[points].tolist(), self.batch[points].tolist(), self.procs[points].tolist(),
                self.throughput[points].tolist(), (self.latency_s[points] * 1000.0).tolist())
        return {pt: Triplet(*t) for pt, t in zip(points.tolist(), zip(*cols))}

    def _exact_extra(self, g: int, lo: int, hi: int, service: Service) -> int:
        """Of a group's sorted points lo..hi-1 (near the threshold), how many are admissible."""
        thr = threshold_ms(service.exact_latency_ms)
        base = int(self.start[g])
        extra = 0
        for pos in range(base + lo, base + hi):
            if Fraction(repr(float(self.lat_sorted[pos]))) * 1000 < thr:
                extra += 1
            else:
                break
        return extra

    def fastest_ms(self, profile: Profile) -> Fraction | None:
        """The lowest latency of any usable point of the profile (exact), None when it has none."""
        lat = self.fastest_s[self.profile_of[profile.content_key]]
        return None if not np.isfinite(lat) else Fraction(repr(float(lat))) * 1000
