"""The live controller's two demonstrations on this machine (CPU, fake MIG nodes, Ray Serve):

- step: one model's rate doubles during an open-loop load; the controller sees it in its window,
  re-plans from the running plan and switches; we measure when capacity is back, the 503s before
  and after, lost requests, and the transition's steps and timings from the decision log;
- switch: a new services file is posted at runtime (`POST /v1/services`) while the load doubles;
  then the new model is loaded too.

    PYTHONPATH=src python bench/bench_control.py [step|switch|both] [--json out.json]

Models sleep a fixed time per batch (bench/live/models.yaml), so a 2-core machine can hold the
plans their profiles (bench/live/profiles) describe.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIVE = ROOT / "bench" / "live"
sys.path.insert(0, str(ROOT / "src"))

from parvagpu.serving.loadgen import Target, load_http, step_load  # noqa: E402


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def _post(url: str, body: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def start(work: Path, duration: float) -> tuple[subprocess.Popen, str, str]:
    py = sys.executable
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    plan = work / "plan.json"
    subprocess.run([py, "-m", "parvagpu", "plan", "-f", str(LIVE / "services.yaml"), "--profiles",
                    str(LIVE / "profiles"), "-o", str(plan)], check=True, env=env, capture_output=True)
    port, cport = _port(), _port()
    cmd = [py, "-m", "parvagpu", "control", str(plan), "--profiles", str(LIVE / "profiles"), "--models",
           str(LIVE / "models.yaml"), "--settings", str(LIVE / "settings.yaml"), "--state-dir", str(work / "state"),
           "--decisions", str(work / "decisions.jsonl"), "--port", str(port), "--control-port", str(cport),
           "--duration", str(duration)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url, curl = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{cport}"
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            if _get(f"{url}/v1/models")["models"] and _get(f"{curl}/v1/plan"):
                return proc, url, curl
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"control did not come up:\n{proc.stdout.read().decode()[-3000:]}")


def decisions(work: Path) -> list[dict]:
    return [json.loads(line) for line in (work / "decisions.jsonl").read_text().splitlines()]


def _utc(rec: dict) -> float:
    return datetime.fromisoformat(rec["utc"]).timestamp()


def summarise(res, t0: float, step_at: float, log: list[dict]) -> dict:
    """Capacity back = the end of the first transition that started after the step (load clock);
    503s before the step and after capacity came back; lost requests; that transition's records."""
    starts = [r for r in log if r["kind"] == "transition" and _utc(r) - t0 > 0]
    first = next((r for r in starts if _utc(r) - t0 >= step_at), None)
    done = next((r for r in log if first is not None and r["kind"] == "transition done" and _utc(r) >= _utc(first)),
                None)
    back = None if done is None else _utc(done) - t0
    rej = [t for t, o in res.replies if o == "rejected"]
    stats = (*res.base.stats, *res.extra.stats)
    return {
        "sent": sum(s.sent for s in stats),
        "ok": sum(s.ok for s in stats),
        "lost": res.lost,
        "failed_or_timed_out": sum(s.failed + s.timeouts for s in stats),
        "rejected_503": len(rej),
        "rejected_before_step": sum(t < step_at for t in rej),
        "rejected_after_capacity_back": None if back is None else sum(t > back + 1.0 for t in rej),
        "replans_before_step": sum(_utc(r) - t0 < step_at for r in starts),
        "replans_after_step": sum(_utc(r) - t0 >= step_at for r in starts),
        "decided_s_after_step": None if first is None else round(_utc(first) - t0 - step_at, 1),
        "capacity_back_s_after_step": None if back is None else round(back - step_at, 1),
        "reason": None if first is None else first["reason"],
        "transition": done,
    }


def run_step(work: Path) -> dict:
    proc, url, curl = start(work, 200)
    try:
        t0 = time.time()
        res = step_load(url, Target("sleepy", 12.0, 1000.0), 2.0, 20.0, 80.0, seed=1, timeout_s=20.0)
        out = summarise(res, t0, 20.0, decisions(work))
        out["plan_after"] = _get(f"{curl}/v1/plan")["plan"]["services"]
        out["rejected_at_s"] = [round(t, 2) for t, o in res.replies if o == "rejected"]
        out["log"] = decisions(work)
        out["load_t0_utc"] = t0
        return out
    finally:
        proc.terminate()
        proc.wait(60)


def run_switch(work: Path) -> dict:
    proc, url, curl = start(work, 200)
    try:
        bad = _post(f"{curl}/v1/services", b"services: [{model: nope, rate: 1, latency_ms: 5}]")
        t0 = time.time()
        import threading

        def post_later():
            time.sleep(20.0)
            post_later.result = _post(f"{curl}/v1/services", (LIVE / "services-switch.yaml").read_bytes())

        th = threading.Thread(target=post_later)
        th.start()
        res = step_load(url, Target("sleepy", 12.0, 1000.0), 2.0, 20.0, 60.0, seed=2, timeout_s=20.0)
        th.join()
        nap = load_http(url, [Target("nap", 20.0, 500.0)], 15.0, seed=3, timeout_s=20.0, synthetic=True)
        out = summarise(res, t0, 20.0, decisions(work))  # after nap's load: a slow transition is in it
        s = nap.stats[0]
        out["bad_post"] = bad
        out["post"] = post_later.result
        out["rejected_at_s"] = [round(t, 2) for t, o in res.replies if o == "rejected"]
        out["log"] = decisions(work)
        out["load_t0_utc"] = t0
        out["nap_after"] = {"sent": s.sent, "ok": s.ok, "rejected": s.rejected, "lost": s.lost,
                            "p99_ms": s.p99_ms}
        return out
    finally:
        proc.terminate()
        proc.wait(60)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("which", nargs="?", default="both", choices=["step", "switch", "both"])
    ap.add_argument("--json")
    a = ap.parse_args()
    out = {}
    for name, fn in (("step", run_step), ("switch", run_switch)):
        if a.which in (name, "both"):
            with tempfile.TemporaryDirectory() as d:
                out[name] = fn(Path(d))
            out[name]["load_average_1min"] = round(os.getloadavg()[0], 1)  # others' work on this machine
            print(json.dumps({name: {k: v for k, v in out[name].items()
                                     if k not in ("transition", "log", "rejected_at_s")}}, indent=1))
            tr = out[name]["transition"]
            if tr:
                print(json.dumps(tr, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
