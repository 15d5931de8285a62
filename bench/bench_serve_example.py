"""The README's plan served on this machine's CPU: all eleven example models answer an OIP request.

Run: .venv/bin/python bench/bench_serve_example.py [--scenario 6] [--rate-scale 0.01] [--port 8000]
     [--max-segments 1] [--max-replicas 1]

Steps (all traffic on 127.0.0.1): `parvagpu plan --scenario K --out WORK/plan.json`; `parvagpu serve`
of it with the packaged models config (random weights), at --rate-scale, with at most
--max-segments segments per model and --max-replicas replicas per segment (a 2-core machine cannot
hold the plan's 102 GPU processes); then, with tritonclient's HTTP client, per model: metadata,
readiness and two binary-tensor requests built from the metadata; prints a Markdown table (status,
output shape, latencies) and the time until the server was ready.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PY = sys.executable


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenario", type=int, default=6)
    ap.add_argument("--rate-scale", type=float, default=0.01)
    ap.add_argument("--max-segments", type=int, default=1)
    ap.add_argument("--max-replicas", type=int, default=1)
    ap.add_argument("--port", type=int, default=8000)
    args = ap.parse_args()
    import tritonclient.http as http

    work = Path(tempfile.mkdtemp(prefix="serve-example-"))
    plan = work / "plan.json"
    subprocess.run([PY, "-m", "parvagpu", "plan", "--scenario", str(args.scenario), "--out", str(plan)],
                   check=True, capture_output=True)
    t0 = time.perf_counter()
    log = open(work / "serve.log", "w")
    server = subprocess.Popen(
        [PY, "-m", "parvagpu", "serve", str(plan), "--port", str(args.port), "--rate-scale", str(args.rate_scale),
         "--max-segments", str(args.max_segments), "--max-replicas", str(args.max_replicas)],
        stdout=log, stderr=subprocess.STDOUT,
    )
    client = http.InferenceServerClient(f"127.0.0.1:{args.port}", network_timeout=300.0)
    try:
        ready = _wait_ready(client, server, work)
        print(f"ready after {ready - t0:.1f} s ({work / 'serve.log'})\n")
        print("| model | input | output | status | first request | second request |")
        print("|---|---|---|---|---:|---:|")
        for model in sorted(m["model"] for m in _models(args.port)):
            print(_one(client, http, model), flush=True)
    finally:
        server.send_signal(2)
        server.wait(timeout=120)


def _wait_ready(client, server, work: Path, timeout: float = 900.0) -> float:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"serve exited with {server.returncode}; see {work / 'serve.log'}")
        try:
            if client.is_server_ready():
                return time.perf_counter()
        except Exception:
            pass
        time.sleep(1.0)
    raise SystemExit("serve did not become ready")


def _models(port: int) -> list[dict]:
    import json
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models") as r:
        return json.load(r)["models"]


def _one(client, http, model: str) -> str:
    meta = client.get_model_metadata(model)
    assert client.is_model_ready(model)
    spec = meta["inputs"][0]
    shape = [1, *(8 if d == -1 else d for d in spec["shape"][1:])]
    rng = np.random.default_rng(0)
    x = rng.integers(0, 1000, shape) if spec["datatype"] == "INT64" else rng.standard_normal(shape).astype(np.float32)
    inp = http.InferInput(spec["name"], shape, spec["datatype"])
    inp.set_data_from_numpy(x)
    out = meta["outputs"][0]
    ms = []
    for _ in range(2):
        t = time.perf_counter()
        try:
            res = client.infer(model, [inp], outputs=[http.InferRequestedOutput(out["name"])])
            y = res.as_numpy(out["name"])
            status = "200"
            got = f"{out['name']} {out['datatype']} {list(y.shape)}"
        except Exception as exc:  # reported, not hidden
            status, got = f"error: {exc}", "-"
        ms.append(1000 * (time.perf_counter() - t))
    return f"| {model} | {spec['name']} {spec['datatype']} {shape} | {got} | {status} | {ms[0]:.0f} ms | {ms[1]:.0f} ms |"


if __name__ == "__main__":
    main()
