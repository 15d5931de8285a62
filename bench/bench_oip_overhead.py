"""What real tensors cost over the synthetic path: the same served plan, the same open-loop rate,
`load --synthetic` (timing-only /v1 requests, the replica's built-in inputs) against `load` (OIP
requests with binary tensors, every answer's outputs checked).

Run: .venv/bin/python bench/bench_oip_overhead.py [--rate 20] [--duration 20] [--rounds 2] [--side 224]

One model, `parvagpu.profiler.zoo:tiny_cnn` on 3 x side x side FP32 images (side 224: 602 KB per
request), one segment (batch 4, 1 replica, SLO 500 ms) on a local Ray cluster; the two kinds of load
alternate `--rounds` times so drift of a shared machine hits both. Prints a Markdown table: p50/p99
latency and the serving overhead (latency - replica queue - model compute) per kind.
"""

from __future__ import annotations

import argparse
import os
import socket

from parvagpu.core.model import DeploymentMap, PlacedSegment, Segment, Service, Triplet
from parvagpu.serving.loadgen import load_http
from parvagpu.serving.policy import serving_spec
from parvagpu.serving.stats import percentile
from parvagpu.serving.workers import parse_models


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--side", type=int, default=224)
    args = ap.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    from parvagpu.serving.app import serve_app

    plan = DeploymentMap("A100-80GB", "parva", 3, 8, (PlacedSegment(Segment("cnn", Triplet(1, 4, 1, 200.0, 20.0)), 0, 0),),
                         (Service("cnn", args.rate, 500.0),))
    models = parse_models({"cnn": {"factory": "parvagpu.profiler.zoo:tiny_cnn", "threads": 1,
                                   "inputs": [{"name": "image", "datatype": "FP32", "shape": [3, args.side, args.side]}],
                                   "outputs": [{"name": "logits", "datatype": "FP32", "shape": [10]}]}})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    serve_app(serving_spec(plan), models, port=port)
    try:
        load_http(url, None, 5.0, seed=99)  # warm both paths
        load_http(url, None, 5.0, seed=98, synthetic=True)
        runs = {"synthetic": [], "real": []}
        for r in range(args.rounds):
            for kind in ("synthetic", "real"):
                runs[kind].append(load_http(url, None, args.duration, seed=r, synthetic=kind == "synthetic"))
    finally:
        ray.shutdown()
    print(f"tiny_cnn 3x{args.side}x{args.side} FP32, {args.rate:g} req/s, {args.rounds} x {args.duration:g} s per kind\n")
    print("| load | sent | ok | 503 | failed | p50 | p99 | overhead p50 | overhead p99 | mean batch |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for kind, results in runs.items():
        lat = sorted(x for res in results for x in res.latencies_ms["cnn"])
        over = sorted(x for res in results for x in _overhead(res))
        batches = [b for res in results for b in res.server["cnn"]["batch"]]
        st = [res.stats[0] for res in results]
        print(f"| {kind} | {sum(s.sent for s in st)} | {sum(s.ok for s in st)} | {sum(s.rejected for s in st)} | "
              f"{sum(s.failed + s.timeouts for s in st)} | {percentile(lat, 50):.1f} ms | {percentile(lat, 99):.1f} ms | "
              f"{percentile(over, 50):.1f} ms | {percentile(over, 99):.1f} ms | {sum(batches) / len(batches):.2f} |")


def _overhead(res) -> list[float]:
    """Per ok request: latency - replica queue - model compute (the load generator keeps ok
    latencies and the server's timings in the same order)."""
    lat, srv = res.latencies_ms["cnn"], res.server["cnn"]
    assert len(lat) == len(srv["queue_ms"]) == len(srv["compute_ms"])
    return [t - q - c for t, q, c in zip(lat, srv["queue_ms"], srv["compute_ms"])]


if __name__ == "__main__":
    main()
