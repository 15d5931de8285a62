"""The whole `plan` command on thousands of distinct models, one profile file each.

Run: .venv/bin/python bench/bench_distinct.py [--sizes 100,1000,5000] [--repeat 1]

For n services, n profile files are written to a temporary directory: copies of the eleven embedded
A100-80GB profiles (cycled), each with its throughputs scaled by a factor of its own (1 - j * 1e-5,
rounded to the file's 3 decimals), so no two files have the same content and nothing can be shared
between models; latencies are unchanged. The SLO pair has one scenario row: each copy gets the rate
and latency SLO of its original in scenario 3 of the embedded example. `--identical` writes exact
copies instead (same content, distinct files).

Measured per size, each as a separate process (`python -m parvagpu plan ... --out plan.json`):
wall time from launch to exit, CPU time (user + system) and peak resident memory (from `wait4`),
the best of `--repeat` runs by wall time, for `--strategy parva` and
for the default (`auto`, `--time-limit 10`), with the GPUs, proven bound and gap of the written plan;
and, in this process, the time to merely read and convert the same CSV files with the standard
library (`csv` and `int`/`float` per cell): the floor the whole command is compared with, in wall
and CPU time (CPU time is the steadier figure on a machine other jobs share).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "src" / "parvagpu" / "data" / "examples" / "sc24-a100-80gb"
SCENARIO = 3


def _scaled(line: str, factor: float) -> str:
    cells = line.split(",")
    cells[3] = f"{float(cells[3]) * factor:.3f}".rstrip("0").rstrip(".") if factor != 1.0 else cells[3]
    return ",".join(cells)


def write_inputs(n: int, root: Path, identical: bool) -> tuple[Path, Path]:
    """n profile files and the SLO pair; returns (profiles dir, SLO dir)."""
    prof_dir, slo_dir = root / "profiles", root / "SLO"
    prof_dir.mkdir()
    slo_dir.mkdir()
    bases = sorted(p.stem for p in (EXAMPLE / "profiles").glob("*.csv"))
    texts = {b: (EXAMPLE / "profiles" / f"{b}.csv").read_text().splitlines() for b in bases}
    rows = {}
    for name in ("SLO_req_rate.csv", "SLO_latency.csv"):
        line = (EXAMPLE / "SLO" / name).read_text().splitlines()[SCENARIO - 1].split(",")
        rows[name] = dict(zip(bases, line))
    names = []
    for i in range(n):
        base = bases[i % len(bases)]
        name = f"{base}-{i:05d}"
        factor = 1.0 if identical else 1.0 - (i // len(bases) + 1) * 1e-5
        lines = texts[base]
        body = [lines[0]] + [_scaled(ln, factor) for ln in lines[1:] if ln.strip()]
        (prof_dir / f"{name}.csv").write_text("\n".join(body) + "\n")
        names.append((name, base))
    names.sort()
    for file, by_base in rows.items():
        (slo_dir / file).write_text(",".join(by_base[b] for _, b in names) + "\n")
    return prof_dir, slo_dir


def stdlib_read(prof_dir: Path) -> tuple[float, float]:
    """(wall, CPU) seconds to read and convert every profile file with `csv` and int/float."""
    t0, c0 = time.perf_counter(), time.process_time()
    for f in sorted(prof_dir.glob("*.csv")):
        with f.open(newline="") as fh:
            rows = csv.reader(fh)
            next(rows)
            for r in rows:
                (int(r[0]), int(r[1]), int(r[2]), float(r[3]), float(r[4]))
    return time.perf_counter() - t0, time.process_time() - c0


def run_plan(args: list[str], out: Path) -> tuple[float, float, float, dict]:
    """(wall seconds, CPU seconds, peak RSS in MiB, the plan JSON) of one `parvagpu plan` process."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "parvagpu", "plan", *args, "--out", str(out)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode()
    if proc.returncode != 0:
        raise SystemExit(f"plan {' '.join(args)} failed ({proc.returncode}): {err}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100,1000,5000")
    ap.add_argument("--repeat", type=int, default=1, help="runs per command (the best is kept)")
    ap.add_argument("--identical", action="store_true", help="exact copies instead of distinct content")
    args = ap.parse_args()
    rows = []
    for n in map(int, args.sizes.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            prof_dir, slo_dir = write_inputs(n, root, args.identical)
            inputs = ["--profiles", str(prof_dir), "--slo", str(slo_dir), "--scenario", "1"]
            floor = min(stdlib_read(prof_dir) for _ in range(args.repeat))  # by wall time
            row = {"n": n, "floor": floor}
            for label, extra in (("parva", ["--strategy", "parva"]), ("auto", [])):
                best = None
                for _ in range(args.repeat):
                    got = run_plan(inputs + extra, root / "plan.json")
                    best = got if best is None or got[0] < best[0] else best
                wall, cpu, rss, plan = best
                row[label] = (wall, cpu, rss, plan["gpus_used"], plan["lower_bound"], plan["gap"])
                print(f"  n={n} {label}: {wall:.2f} s wall, {cpu:.2f} s CPU, {rss:.0f} MiB, "
                      f"{plan['gpus_used']} GPUs, bound {plan['lower_bound']}", file=sys.stderr, flush=True)
            rows.append(row)
    print(f"machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
          f"python {platform.python_version()}; {'identical copies' if args.identical else 'distinct content'}")
    print()
    print("| services | stdlib read (wall / CPU) | parva (wall / CPU) | parva peak | default (wall / CPU) "
          "| default peak | GPUs | bound | gap | default / stdlib (wall, CPU) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        fw, fc = r["floor"]
        pw, pc, pm, *_ = r["parva"]
        aw, ac, am, gpus, lb, gap = r["auto"]
        print(f"| {r['n']:,} | {fw:.2f} / {fc:.2f} s | {pw:.2f} / {pc:.2f} s | {pm:.0f} MiB | {aw:.2f} / {ac:.2f} s "
              f"| {am:.0f} MiB | {gpus:,} | {'' if lb is None else f'{lb:,}'} | {'' if gap is None else f'{gap:.2%}'} "
              f"| {aw / fw:.1f}x, {ac / fc:.1f}x |")
    if len(rows) >= 2:
        a, b = rows[-2], rows[-1]
        for i, what in ((0, "wall"), (1, "CPU")):
            k = math.log(b["auto"][i] / a["auto"][i]) / math.log(b["n"] / a["n"])
            print(f"growth exponent of the default command ({what}) between {a['n']:,} and {b['n']:,} services: {k:.2f}")


if __name__ == "__main__":
    main()
