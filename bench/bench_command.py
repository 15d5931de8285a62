"""The whole re-plan command, `parvagpu plan ... --current RUNNING.json`, timed as a user runs it.

Run: .venv/bin/python bench/bench_command.py [--sizes 1000,5000] [--repeat 1] [--time-limit 10]
     [--keep DIR] [--profile-out FILE] [--src DIR]

For n services (`bench/common.py`'s seeded workload: rates 50-3000 req/s, latency SLOs 1.2-4x the
tightest) n profile files are written, each a copy of its model's embedded profile with the
throughputs scaled by a factor of its own (as `bench_distinct.py` does), so no two files share
content; the services go to a JSON services file. The running plan is the command's own fresh plan
(`plan --services S --out running.json --time-limit 30`, not timed). Then two changes are
re-planned from it, each as a separate process (`python -m parvagpu plan --profiles DIR --services
NEW.json --current running.json --time-limit T --out new.json`):
  one model: one seeded model's rate x1.1;
  20 % random: 20 % of the models (seeded) get a factor from [0.7, 1.3].
Per run: wall time from launch to exit, CPU time (user + system) and peak resident memory (from
`wait4`), the best of `--repeat` runs by wall time, and from the written plan the GPUs, the changed
segments and whether it is proven optimal. With `--profile-out FILE` each re-plan also runs once
under cProfile (to FILE.<n>.<case>, the imports included), not timed. `--src DIR` times another
source tree (e.g. an older commit's `src`, from `git archive`) on the same workloads.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_distinct import _scaled  # noqa: E402
from common import random_services  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "src" / "parvagpu" / "data" / "examples" / "sc24-a100-80gb"


def write_workload(n: int, root: Path) -> tuple[Path, list[dict]]:
    """n distinct profile files under root/profiles; returns the directory and the services."""
    prof_dir = root / "profiles"
    prof_dir.mkdir()
    texts = {p.stem: p.read_text().splitlines() for p in (EXAMPLE / "profiles").glob("*.csv")}
    _, services = random_services(n, 0)
    for i, s in enumerate(services):
        base = s.model.rsplit("-", 1)[0]
        factor = 1.0 - (i // len(texts) + 1) * 1e-5
        lines = texts[base]
        body = [lines[0]] + [_scaled(ln, factor) for ln in lines[1:] if ln.strip()]
        (prof_dir / f"{s.model}.csv").write_text("\n".join(body) + "\n")
    return prof_dir, [{"model": s.model, "rate": s.rate, "latency_ms": s.latency_ms} for s in services]


def changed(services: list[dict], kind: str) -> list[dict]:
    """The new services: one model x1.1, or 20 % of the models by factors from [0.7, 1.3]."""
    rng = random.Random(1)
    if kind == "one model":
        picked = {rng.choice(services)["model"]: 1.1}
    else:
        models = rng.sample([s["model"] for s in services], max(1, round(0.2 * len(services))))
        picked = {m: rng.uniform(0.7, 1.3) for m in models}
    return [dict(s, rate=round(s["rate"] * picked[s["model"]], 3)) if s["model"] in picked else s
            for s in services]


SRC = ROOT / "src"
# The command under cProfile: the CLI called as `python -m parvagpu` calls it (the start taken before
# its imports), but not as the process's owner, so it returns (`cli.common.finish_now` would end the
# process before the profile is written) and the profile is dumped.
_PROFILED = """import sys, time
started = time.perf_counter()
import cProfile
sys.argv = ["parvagpu"] + sys.argv[1:]
profile = cProfile.Profile()
profile.enable()
from parvagpu.cli.common import PROCESS
PROCESS.started = started
from parvagpu.cli import app
try:
    app(prog_name="parvagpu")
except SystemExit as stop:
    if stop.code:
        raise
profile.disable()
profile.dump_stats({out!r})
"""


def run(args: list[str], prefix: tuple[str, ...] = ("-m", "parvagpu")) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, peak RSS MiB) of one child process."""
    env = dict(os.environ, PYTHONPATH=str(SRC))
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *prefix, *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{' '.join(args)} failed ({code}): {proc.stderr.read().decode()}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000,5000")
    ap.add_argument("--repeat", type=int, default=1, help="runs per command (the best is kept)")
    ap.add_argument("--time-limit", type=float, default=10.0)
    ap.add_argument("--keep", type=Path, help="write the workloads here (kept, and reused when present)")
    ap.add_argument("--profile-out", help="also run each re-plan once under cProfile, to FILE.<n>.<case>")
    ap.add_argument("--src", type=Path, help="the source tree to time (default: this checkout's src)")
    args = ap.parse_args()
    global SRC
    SRC = (args.src or SRC).resolve()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in map(int, args.sizes.split(",")):
            root = (args.keep or Path(tmp)) / str(n)
            if not (root / "running.json").exists():
                root.mkdir(parents=True, exist_ok=True)
                prof_dir, services = write_workload(n, root)
                (root / "services.json").write_text(json.dumps(services))
                run(["plan", "--profiles", str(prof_dir), "--services", str(root / "services.json"),
                     "--time-limit", "30", "--out", str(root / "running.json")])
            running = json.loads((root / "running.json").read_text())
            services = json.loads((root / "services.json").read_text())
            for kind in ("one model", "20 % random"):
                tag = kind.split()[0]
                new = root / f"new-{tag}.json"
                new.write_text(json.dumps(changed(services, kind)))
                cmd = ["plan", "--profiles", str(root / "profiles"), "--services", str(new), "--current",
                       str(root / "running.json"), "--time-limit", f"{args.time_limit:g}", "--out",
                       str(root / f"plan-{tag}.json")]
                if args.profile_out:
                    run(cmd, ("-c", _PROFILED.format(out=f"{args.profile_out}.{n}.{tag}")))
                load = os.getloadavg()[0]
                best = min((run(cmd) for _ in range(args.repeat)), key=lambda r: r[0])
                plan = json.loads((root / f"plan-{tag}.json").read_text())
                t = plan["transition"]
                rows.append((n, kind, *best, load, running["gpus_used"], plan["gpus_used"], plan["lower_bound"],
                             len(t["added"]) + len(t["removed"]), os.path.getsize(root / "running.json")))
                print(f"  n={n} {kind}: {best[0]:.2f} s wall, {best[1]:.2f} s CPU, load {load:.1f}",
                      file=sys.stderr, flush=True)
    print(f"machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
          f"python {platform.python_version()}; --time-limit {args.time_limit:g}; source {SRC}")
    print()
    print("| services | changes | wall | CPU | peak | load (1 min) | GPUs before | GPUs | bound | changed segments "
          "| running plan |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n, kind, wall, cpu, rss, load, before, gpus, lb, moves, size in rows:
        print(f"| {n:,} | {kind} | {wall:.2f} s | {cpu:.2f} s | {rss:.0f} MiB | {load:.1f} | {before:,} | {gpus:,} "
              f"| {'' if lb is None else f'{lb:,}'} | {moves:,} | {size / 2**20:.1f} MiB |")


if __name__ == "__main__":
    main()
