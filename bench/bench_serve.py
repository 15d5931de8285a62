"""End to end on this machine's CPU: profile two zoo models, plan, serve on a local Ray cluster,
load it open-loop, and compare with the simulator.

Run: nice -n -10 .venv/bin/python bench/bench_serve.py [--workdir DIR] [--duration 60] [--port 8000]
(the higher priority shields the run from other jobs on a shared machine; the serve process and
its Ray workers inherit it)

Steps (all traffic on 127.0.0.1):
1. `parvagpu profile` (cpu mode) of `tiny_cnn` (3x640x640 inputs) and `small_mlp` into DIR/profiles
   (kept between runs: the profiler only measures missing points);
2. `parvagpu plan` for the services below;
3. the direct cost of each model: `run(k)` of the worker's own runner, in this process;
4. `parvagpu serve` in a child process, then `load` at 1x for --duration s, at 1.5x for --duration s,
   at 2x for --kill-duration s, and at 1x again for --kill-duration s while one replica process of
   the segment with the most replicas is killed (SIGKILL, by its pid) a third of the way in;
5. `simulate` of the same plan with the measured profiles, at 1x and 1.5x, with the measured
   serving overhead added.
Writes DIR/result.json, DIR/load-*.json, DIR/cdf-1x.png and prints a Markdown summary.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
CLI = [PY, "-m", "parvagpu"]

SLO_MS = {"tiny_cnn": 400.0, "small_mlp": 200.0}
SMALL_MLP_RATE = 10.0
LOAD_FACTOR = 0.75  # tiny_cnn's rate: this share of the best 1-core segment the profile admits


def services_yaml(profiles_dir: Path) -> tuple[str, float]:
    """tiny_cnn's rate from its measured profile: its plan is then one 1-core segment loaded to
    LOAD_FACTOR, so 1x leaves headroom and 1.5x exceeds the planned capacity. Its inputs are
    3x640x640, so the model, not the serving stack, is what a request mostly costs: on 2 cores the
    HTTP proxy, ingress and replica runtime need about 10 ms of CPU per request, which a plan made
    from a model-only CPU profile does not see."""
    from parvagpu.inputs.profiles import load_profile

    prof = load_profile(profiles_dir / "tiny_cnn.csv")
    best = max(p.segment_throughput for p in prof.points
               if p.size == 1 and p.runnable and p.latency_ms < 0.45 * SLO_MS["tiny_cnn"])
    rate = round(LOAD_FACTOR * best)
    return (
        "version: v1\nservices:\n"
        f"  - {{model: tiny_cnn, rate: {rate}, latency_ms: {SLO_MS['tiny_cnn']:g}}}\n"
        f"  - {{model: small_mlp, rate: {SMALL_MLP_RATE:g}, latency_ms: {SLO_MS['small_mlp']:g}}}\n"
    ), best


MODELS = """version: v1
models:
  tiny_cnn: {factory: "parvagpu.profiler.zoo:tiny_cnn", shape: [3, 640, 640]}
  small_mlp: {factory: "parvagpu.profiler.zoo:small_mlp", shape: [64]}
"""
PROFILE_ARGS = ["--mode", "cpu", "--sizes", "1,2", "--batches", "1,2,4,8", "--procs", "1,2", "--duration", "2"]


def sh(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    print("$", " ".join(cmd[2:] if cmd[:2] == [PY, "-m"] else cmd), file=sys.stderr, flush=True)
    return subprocess.run(cmd, check=True, **kw)


def profile(work: Path) -> None:
    out = work / "profiles"
    sh(CLI + ["profile", "parvagpu.profiler.zoo:tiny_cnn", "--shape", "3,640,640", *PROFILE_ARGS, "--out", str(out), "-q"])
    sh(CLI + ["profile", "parvagpu.profiler.zoo:small_mlp", *PROFILE_ARGS, "--out", str(out), "-q"])


def direct_cost(plan, models, n: int = 300) -> dict:
    """p50/p99 of calling each model directly (its segment's batch size and batch 1), in-process."""
    from parvagpu.serving.stats import summarize
    from parvagpu.serving.workers import build_runner

    out = {}
    for seg in plan.segments:
        m = models[seg.model]
        b = seg.segment.triplet.batch
        run = build_runner(m, b)
        for _ in range(10):
            run(1)
        res = {}
        for k in sorted({1, b}):
            xs = [1000.0 * run(k) for _ in range(n)]
            s = summarize(seg.model, 0, 1, xs, n)
            res[f"batch{k}"] = {"p50": s.p50_ms, "p99": s.p99_ms, "mean": s.mean_ms}
        out[seg.model] = res
    return out


def measured_scale(run: dict, plan, model: str) -> float:
    """In-serving model call time over the profiled batch latency, for the model's segment batch
    actually formed most often (p50 of both)."""
    seg = next(s for s in plan.segments if s.model == model)
    sv = run["server"].get(model, {})
    if not sv:
        return 1.0
    return sv["compute_ms"]["p50"] / seg.segment.triplet.latency_ms * seg.segment.triplet.batch / max(1.0, sv["batch"]["p50"])


def replica_pids(segment_prefix: str) -> list[int]:
    """Pids of Ray Serve replica processes whose title names the segment (Ray sets the title)."""
    pids = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cmd.startswith("ray::ServeReplica") and segment_prefix in cmd:
            pids.append(int(p.name))
    return sorted(pids)


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 240.0) -> None:
    import urllib.request

    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"serve exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/v1/models", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1.0)
    raise SystemExit("serve did not become ready")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", type=Path, default=Path("bench-serve"))
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--kill-duration", type=float, default=30.0)
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    (work / "models.yaml").write_text(MODELS)
    url = f"http://127.0.0.1:{args.port}"

    from parvagpu.contract.plan_json import read_plan
    from parvagpu.inputs.profiles import load_profiles
    from parvagpu.serving.loadgen import load_http, targets_from_plan
    from parvagpu.serving.simulator import simulate
    from parvagpu.serving.stats import plot_cdf
    from parvagpu.serving.workers import read_models

    profile(work)
    text, best = services_yaml(work / "profiles")
    (work / "services.yaml").write_text(text)
    sh(CLI + ["plan", "--profiles", str(work / "profiles"), "--services", str(work / "services.yaml"),
              "--out", str(work / "plan.json")])
    plan = read_plan(work / "plan.json")[0]
    models = read_models(work / "models.yaml")
    direct = direct_cost(plan, models)

    log = open(work / "serve.log", "w")
    server = subprocess.Popen(CLI + ["serve", str(work / "plan.json"), "--models", str(work / "models.yaml"),
                                     "--port", str(args.port)], stdout=log, stderr=subprocess.STDOUT)
    results: dict = {"date": date.today().isoformat(), "machine": f"{os.cpu_count()} cores, {platform.machine()}",
                     "python": platform.python_version(), "niceness": os.nice(0), "direct_ms": direct,
                     "tiny_cnn_best_1core_segment": best, "services": (work / "services.yaml").read_text(),
                     "plan_segments": json.loads((work / "plan.json").read_text())["segments"]}
    try:
        t0 = time.time()
        wait_ready(url, server)
        results["deploy_s"] = time.time() - t0
        runs = {}
        # warm-up, not recorded: first requests through each path pay one-time costs
        load_http(url, targets_from_plan(plan, 0.5), 10.0, seed=args.seed + 7, timeout_s=30, synthetic=True)
        results["loadavg_before"] = os.getloadavg()
        for name, scale, dur in (("1x", 1.0, args.duration), ("1.5x", 1.5, args.duration),
                                 ("2x", 2.0, args.kill_duration)):
            res = load_http(url, targets_from_plan(plan, scale), dur, seed=args.seed, rate_scale=scale, timeout_s=30,
                            synthetic=True)
            runs[name] = res
            (work / f"load-{name}.json").write_text(json.dumps(res.to_dict(latencies=True)))
            print(f"load {name}: lost {res.lost}", file=sys.stderr, flush=True)
            time.sleep(3)
        # kill one replica process of the segment with the most replicas, a third of the way into a
        # 1x run, and time until Ray Serve has all its replicas again
        target = max(plan.segments, key=lambda s: (s.segment.triplet.procs, s.model == "tiny_cnn"))
        prefix = f"{target.model}-n{plan.node_of(target.gpu)}-g{plan.local_gpu(target.gpu)}-s{target.start}"
        procs = target.segment.triplet.procs
        killed: dict = {"segment": prefix, "replicas": procs}

        def killer():
            time.sleep(args.kill_duration / 3)
            before = replica_pids(prefix)
            if not before:
                return
            os.kill(before[0], signal.SIGKILL)
            t_kill = time.time()
            killed.update(pid=before[0], at_s=args.kill_duration / 3)
            while time.time() - t_kill < 120:
                now = replica_pids(prefix)
                if len(now) >= procs and before[0] not in now:
                    killed["replica_back_after_s"] = time.time() - t_kill
                    return
                time.sleep(0.2)

        k = threading.Thread(target=killer)
        k.start()
        res = load_http(url, targets_from_plan(plan, 1.0), args.kill_duration, seed=args.seed + 1, timeout_s=30,
                        synthetic=True)
        k.join()
        runs["kill"] = res
        (work / "load-kill.json").write_text(json.dumps(res.to_dict(), indent=2))
        results["loadavg_after"] = os.getloadavg()
        results["killed"] = killed
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=120)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()

    results["load"] = {k: v.to_dict() for k, v in runs.items()}
    plot_cdf(runs["1x"].latencies_ms, {s.model: s.slo_ms for s in runs["1x"].stats}, work / "cdf-1x.png",
             "measured latency CDF, CPU, 1x planned rates")
    profiles = load_profiles(work / "profiles")
    sims = {}
    for name, scale in (("1x", 1.0), ("1.5x", 1.5), ("2x", 2.0)):
        oh = {m: o["p50"] for m, o in runs[name].overhead_ms.items()}
        sim = simulate(plan, duration_s=args.duration, seed=args.seed, rate_scale=scale, profiles=profiles)
        # the same, with tiny_cnn's service times scaled to what the model call took in serving
        slow = measured_scale(runs["1x"].to_dict(), plan, "tiny_cnn")
        sim2 = simulate(plan, duration_s=args.duration, seed=args.seed, rate_scale=scale, profiles=profiles,
                        service_scale=slow)
        sims[name] = {"elapsed_s": sim.elapsed_s, "service_scale": slow,
                      "models": [{**s.to_dict(), "p99_plus_overhead_ms": s.p99_ms + oh.get(s.model, 0.0),
                                  "scaled": {"p50_ms": t.p50_ms, "p99_ms": t.p99_ms, "rejected": t.rejected,
                                             "p99_plus_overhead_ms": t.p99_ms + oh.get(t.model, 0.0)}}
                                 for s, t in zip(sim.stats, sim2.stats)]}
    results["simulated"] = sims
    (work / "result.json").write_text(json.dumps(results, indent=2))
    print(summary(results))


def summary(r: dict) -> str:
    lines = [f"date {r['date']}, {r['machine']}, Python {r['python']}, nice {r['niceness']}, deploy {r.get('deploy_s', 0):.0f} s, "
             f"load average before {r.get('loadavg_before')} after {r.get('loadavg_after')}", ""]
    lines.append("| run | model | rate/s | SLO ms | sent | ok | 503 | failed | timeout | lost | p50 ms | p99 ms | max ms | attainment |")
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for run, d in r["load"].items():
        for m in d["models"]:
            lines.append(
                f"| {run} | {m['model']} | {m['rate']:g} | {m['slo_ms']:g} | {m['sent']} | {m['ok']} | {m['rejected']} | "
                f"{m['failed']} | {m['timeouts']} | {m['lost']} | {m['p50_ms']:.1f} | {m['p99_ms']:.1f} | "
                f"{m['max_ms']:.1f} | {100 * m['attainment']:.2f}% |"
            )
    lines += ["", "| model | direct call p50 / p99 ms (batch 1; segment batch) | in serving: batch p50, model call p50 / p99 ms, "
              "queue+wait p50 ms | serving overhead p50 / p99 ms | end to end p50 / p99 ms |", "|---|---|---|---|---|"]
    for model, d in r["direct_ms"].items():
        run = r["load"]["1x"]
        o = run["overhead_ms"].get(model, {})
        sv = run["server"].get(model, {})
        m = next(x for x in run["models"] if x["model"] == model)
        direct = "; ".join(f"{v['p50']:.2f} / {v['p99']:.2f}" for v in d.values())
        lines.append(
            f"| {model} | {direct} | {sv['batch']['p50']:.0f}, {sv['compute_ms']['p50']:.2f} / {sv['compute_ms']['p99']:.2f}, "
            f"{sv['queue_ms']['p50']:.1f} | {o['p50']:.1f} / {o['p99']:.1f} | {m['p50_ms']:.1f} / {m['p99_ms']:.1f} |"
        )
    lines += ["", "| run | model | simulated p50 / p99 ms | simulated 503 | + measured overhead p99 ms | "
              "service x measured slowdown: p50 / p99 ms, 503, + overhead p99 ms |", "|---|---|---|---:|---:|---|"]
    for run, d in r["simulated"].items():
        for m in d["models"]:
            sc = m["scaled"]
            lines.append(f"| {run} | {m['model']} | {m['p50_ms']:.1f} / {m['p99_ms']:.1f} | {m['rejected']} | "
                         f"{m['p99_plus_overhead_ms']:.1f} | x{d['service_scale']:.2f}: {sc['p50_ms']:.1f} / {sc['p99_ms']:.1f}, "
                         f"{sc['rejected']}, {sc['p99_plus_overhead_ms']:.1f} |")
    for run, d in r["load"].items():
        lines.append(f"slowest ({run}): " + ", ".join(f"{x['model']}@{x['sent_at_s']:.1f}s {x['latency_ms']:.0f}ms"
                                                  for x in d.get("slowest", [])[:5]))
    lines.append(f"\nkilled: {r.get('killed')}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
