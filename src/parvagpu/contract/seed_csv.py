"""The reference scheduler's deployment-map CSV, for tools that read the seed format."""

from __future__ import annotations

import csv
import io

from parvagpu.core.model import DeploymentMap

SEED_CSV_HEADER = "Num instance,Num GPU,Model,Placement,Instance size,Batch size,Num proc"


def plan_to_seed_csv(plan: DeploymentMap) -> str:
    """The reference deployment-map CSV; `Placement` is the real NVIDIA start slot."""
    buf = io.StringIO()
    buf.write(SEED_CSV_HEADER + "\n")
    w = csv.writer(buf, lineterminator="\n")
    for s in sorted(plan.segments, key=lambda s: (s.gpu, -s.size, s.start)):
        t = s.segment.triplet
        w.writerow([plan.node_of(s.gpu), plan.local_gpu(s.gpu), s.model, s.start, s.size, t.batch, t.procs])
    return buf.getvalue()
