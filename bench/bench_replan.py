"""Re-planning from the running plan (`plan --current`): how much changes, and how fast.

Run: .venv/bin/python bench/bench_replan.py [--sizes 100,1000] [--sample 20] [--scenarios 1-6]

For each workload the running plan is the default strategy's (`auto`) fresh plan. Then
(a) single-model changes: one model's rate x0.7, x0.9, x1.1 and x1.3 (every model of the embedded
    scenarios; `--sample` models of the generated workloads), and
(b) random changes: 20 % of the models (seeded) get a factor drawn from [0.7, 1.3]
are re-planned with `--current`. Per case: segments changed (added + removed), whether other
models' segments moved (and, for a single-model change, whether that was avoidable: some plan at
the re-plan's GPU count keeps them all, `replan_bound.others_can_stay`), GPUs against the fresh optimum (the `auto` plan from scratch of the new
rates with `REFERENCE_S` seconds, made apart and not timed; not made where the re-plan uses as
many GPUs as the proven lower bound it reports, which no fresh plan can beat: the row's
`reference` says `bound` there, `fresh` where the plan was made), planning time, and the worst capacity
dip of the make-before-break transition. Every plan is checked with `verify` and every transition
with `verify_schedule` (`--no-dips` skips the transitions; `--cases` lists each case's changes). `--extra-gpus K` re-plans with
`--max-extra-gpus K`; `--bound` adds, per case, the slice-counting lower bound on the changes of
any plan with that many GPUs (`replan_bound.py`); `--exact S` with it, the fewest changes any plan
with that many GPUs can have, by the move-aware program with every GPU open given S seconds
(`replan_bound.fewest_changes`; "unproven" when it did not end in time). `--cache DIR` keeps the running plans and the reference fresh plans (pickled,
keyed by their services and limit), so a re-run times the re-plans alone.

`--models SPEC` picks the generated workloads' models for (a) instead of `--sample`: `all`, `N`
(the first N of a seeded shuffle of the models) or `A:B` (its A-th to B-th, so a later run can
extend a sample); `--rows FILE` appends every single-model case to FILE (JSON lines) and skips
the cases already there, so a long measurement can be resumed or extended, and its rows summed.
Single-model rows give the cases with other models moved as a count, with a 95 % confidence
interval for their share when the models are a sample (by model, since a model's four factors
are alike; `census` when every model was run).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import pickle
import random
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import base_profiles, random_services  # noqa: E402
from replan_bound import change_bound, fewest_changes, others_can_stay  # noqa: E402

from parvagpu.cli.common import example_dir  # noqa: E402
from parvagpu.core.gpus import gpu_type  # noqa: E402
from parvagpu.core.model import Profile  # noqa: E402
from parvagpu.inputs.services import load_scenario  # noqa: E402
from parvagpu.planning.request import PlanRequest  # noqa: E402
from parvagpu.planning.strategies import plan  # noqa: E402
from parvagpu.planning.transition import schedule  # noqa: E402
from parvagpu.verify import dipping_model, verify, verify_schedule  # noqa: E402

GPU = gpu_type("A100-80GB")
FACTORS = (0.7, 0.9, 1.1, 1.3)


def loaded_like(profiles: dict[str, Profile], base: dict[str, Profile]) -> dict[str, Profile]:
    """The workload's profiles as the loader makes them (from columns, one digest per file
    content), not rebuilt point by point for every service."""
    return {name: Profile(name, source=p.source, columns=base[name.rsplit("-", 1)[0]].columns)
            for name, p in profiles.items()}


REFERENCE_S = 30.0  # time limit of the running plan and of the fresh plans compared with
CACHE: Path | None = None  # --cache: where fresh plans (running and reference) are kept


def fresh_plan(req: PlanRequest):
    """`auto` from scratch with `REFERENCE_S` seconds (at least the request's limit); made once
    per services and limit when `--cache` names a folder."""
    req = replace(req, current=None, time_limit=max(req.time_limit, REFERENCE_S))
    key = hashlib.sha256(repr((req.services, req.time_limit, req.max_procs, req.gpu.name)).encode()).hexdigest()[:20]
    path = CACHE / f"fresh-{key}.pkl" if CACHE is not None else None
    if path is not None and path.exists():
        return pickle.loads(path.read_bytes())
    out = plan(req, "auto")
    if path is not None:
        path.write_bytes(pickle.dumps(out))
    return out
EXTRA = 0  # --extra-gpus: GPUs beyond the fresh plan's that each re-plan may use
BOUND = False  # --bound: the slice-counting lower bound on changes at the re-plan's GPUs, case (b)
EXACT = 0.0  # --exact S: the fewest changes at the re-plan's GPUs, the move-aware program given S s, case (b)
CASES = False  # --cases: list each case's changes in the row
DIPS = True  # --no-dips: skip the transition's schedule (minutes for a wide change at 5,000 services)


def run_case(profiles, current, services, changed: set[str], time_limit: float, bound: bool = False) -> dict:
    req = PlanRequest(services, profiles, GPU, 3, time_limit=time_limit, current=current, max_extra_gpus=EXTRA)
    t0, c0 = time.perf_counter(), time.process_time()
    new = plan(req, "auto")
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert verify(new, profiles) == [], verify(new, profiles)
    # The fresh optimum the re-plan is held to: `auto` from scratch on the new rates, given time;
    # skipped where the re-plan already sits at its own proven lower bound (`fresh_optimum`).
    fresh, reference = fresh_optimum(req, new)
    t = new.transition
    others = sum(1 for s in t.added + t.removed if s.model not in changed)
    # Could this case have kept every other model in place at the re-plan's GPU count?
    avoidable = None if len(changed) != 1 else (  # not looked at for several changed models
        bool(others) and others_can_stay(req, next(iter(changed)), new.gpus_used))
    worst, steps = dip(current, new) if DIPS else (None, None)
    return {
        "changed": t.changed,
        "others": others,
        "avoidable": avoidable,
        "gpus": new.gpus_used,
        "fresh": fresh,
        "reference": reference,
        "time": dt,
        "cpu": cpu,
        "dip": worst,
        "dip_steps": steps,
        "models": len(changed),
        "bound": change_bound(req, new.gpus_used) if bound else None,
        "exact": fewest_changes(req, new.gpus_used, new.segments, EXACT) if bound and EXACT else None,
    }


def fresh_optimum(req: PlanRequest, new) -> tuple[int, str]:
    """The fresh optimum's GPU count and where it came from. `bound`: the re-plan uses as many
    GPUs as the proven lower bound on any plan of the new rates that it reports (the optimizer's
    bound, `gpu_lower_bound`), so no fresh plan can use fewer, and the re-plan itself is a plan of
    those rates, so that count is the fresh optimum: the 30 s reference (up to `REFERENCE_S` a
    case) is not made. `fresh`: otherwise, the reference plan's count."""
    bound = dict(new.stats).get("gpu_lower_bound")
    if bound is not None and new.gpus_used == bound:
        return new.gpus_used, "bound"
    return fresh_plan(req).gpus_used, "fresh"


def dip(current, new) -> tuple[float, int]:
    """The make-before-break transition's worst shortfall (relative to its floor) and longest dip,
    the schedule checked with `verify_schedule`."""
    sched = schedule(current, new)
    problems = [p for p in verify_schedule(current, new, sched.steps) if dipping_model(p) is None]
    assert problems == [], problems
    floors = {m.model: m.floor for m in new.transition.models}
    worst = max((d.shortfall / floors[d.model] for d in sched.dips if floors.get(d.model)), default=0.0)
    return worst, max((d.steps for d in sched.dips), default=0)


NOTES: list[str] = []  # lines printed under the table
ROWS: Path | None = None  # --rows: the single-model cases measured so far (JSON lines)


def single_changes(profiles, services, models, time_limit, label: str = ""):
    """Every model of `models` at every factor; with `--rows`, the cases already in that file
    are read back instead of run, and each new one is appended as soon as it is measured."""
    current = fresh_plan(PlanRequest(services, profiles, GPU, 3, time_limit=time_limit))
    workload = f"{label}|{time_limit:g}|{EXTRA}"
    done = {}
    if ROWS is not None and ROWS.exists():
        for line in ROWS.read_text().splitlines():
            r = json.loads(line)
            if r["workload"] == workload:
                done[r["model"], r["factor"]] = r
    rows, start = [], time.perf_counter()
    for i, m in enumerate(models):
        for f in FACTORS:
            if (m, f) in done:
                rows.append(done[m, f])
                continue
            new = tuple(replace(s, rate=round(s.rate * f, 3)) if s.model == m else s for s in services)
            r = {"workload": workload, "model": m, "factor": f, **run_case(profiles, current, new, {m}, time_limit)}
            rows.append(r)
            if ROWS is not None:
                with ROWS.open("a") as out:
                    out.write(json.dumps(r) + "\n")
        if ROWS is not None and (i + 1) % 10 == 0:  # a long run says how far it is
            print(f"{label}: {i + 1} of {len(models)} models, {sum(1 for r in rows if r['others'])} of "
                  f"{len(rows)} cases moved others, {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return rows


def moved_ci(rows: list[dict], population: int) -> str:
    """95 % interval for the share of cases that move other models, the measured models being a
    simple random sample of `population`: a ratio estimate over models (a model's four factors
    are correlated), with finite-population correction, turned into an effective number of
    cases for a Wilson interval; `census` when every model was measured."""
    per: dict[str, list[int]] = {}
    for r in rows:
        k = per.setdefault(r["model"], [0, 0])
        k[0] += bool(r["others"])
        k[1] += 1
    n, cases = len(per), len(rows)
    if n >= population:
        return "census"
    p = sum(k for k, _ in per.values()) / cases
    mean = cases / n
    var = (sum((k - p * c) ** 2 for k, c in per.values()) / (n - 1) / mean ** 2 / n * (1 - n / population)
           if n > 1 else 0.0)
    n_eff = p * (1 - p) / var if var > 0 else cases
    z = 1.96
    mid = (p + z * z / (2 * n_eff)) / (1 + z * z / n_eff)
    half = z * math.sqrt(p * (1 - p) / n_eff + z * z / (4 * n_eff ** 2)) / (1 + z * z / n_eff)
    return f"{max(0.0, mid - half):.1%}-{min(1.0, mid + half):.1%}"


def random_changes(profiles, services, seeds, time_limit):
    current = fresh_plan(PlanRequest(services, profiles, GPU, 3, time_limit=time_limit))
    rows = []
    for seed in range(seeds):
        rng = random.Random(seed)
        picked = set(rng.sample([s.model for s in services], max(1, round(0.2 * len(services)))))
        new = tuple(replace(s, rate=round(s.rate * rng.uniform(0.7, 1.3), 3)) if s.model in picked else s
                    for s in services)
        rows.append(run_case(profiles, current, new, picked, time_limit, BOUND))
    return rows


def summary(label: str, kind: str, rows: list[dict], population: int = 0) -> str:
    """One table row; `population`: the workload's models, for the interval of a sample."""
    n = len(rows)
    med = statistics.median(r["changed"] for r in rows)
    moved = sum(1 for r in rows if r["others"]) / n
    avoidable = "" if all(r["avoidable"] is None for r in rows) else f" ({sum(1 for r in rows if r['avoidable'])})"
    if population and n > 40:  # a large single-model row: the count, the sample's interval, CPU
        avoidable = (f" = {sum(1 for r in rows if r['others'])}/{n}{avoidable}; 95 % CI "
                     f"{moved_ci(rows, population)}")
        cpu = sorted(r["cpu"] for r in rows)
        at_bound = sum(1 for r in rows if r.get("reference") == "bound")
        NOTES.append(f"{label} {kind}: {len({r['model'] for r in rows})} models; CPU median "
                     f"{statistics.median(cpu):.2f} s, max {cpu[-1]:.2f} s; fresh optimum read from "
                     f"the re-plan's bound in {at_bound} cases, a reference plan in {n - at_bound}")
    equal = sum(1 for r in rows if r["gpus"] == r["fresh"] + EXTRA)
    fewer = sum(1 for r in rows if r["gpus"] < r["fresh"] + EXTRA)
    more = sum(1 for r in rows if r["gpus"] > r["fresh"] + EXTRA)
    other = ", ".join(f"{k} {w}" for k, w in ((fewer, "fewer"), (more, "more")) if k)
    per_model = max(r["changed"] / r["models"] for r in rows)
    times = sorted(r["time"] for r in rows)
    dips = "not measured" if not DIPS else (
        f"{sum(1 for r in rows if r['dip'] > 0)} ({max(r['dip'] for r in rows):.0%})")
    if rows[0]["bound"] is not None:
        kind += " (changes >= " + ", ".join(str(r["bound"]) for r in rows) + ")"
    if rows[0].get("exact") is not None:
        kind += (" (fewest possible: " + ", ".join(
            "?" if r["exact"][0] is None else f"{r['exact'][0]}{'' if r['exact'][1] else ' unproven'}"
            for r in rows) + ")")
    if CASES and n <= 10:  # the random draws; single-model rows list too many
        kind += (" [changed " + ", ".join(str(r["changed"]) for r in rows) + "; CPU "
                 + ", ".join(f"{r['cpu']:.2f}" for r in rows) + " s]")
    return (
        f"| {label}{f' (+{EXTRA} GPUs)' if EXTRA else ''} | {kind} | {n} | {med:g} | {max(r['changed'] for r in rows)} | {per_model:.2f} | "
        f"{moved:.0%}{avoidable} | {equal}/{n}{f' ({other})' if other else ''} | {statistics.median(times):.2f} s | {times[-1]:.2f} s | "
        f"{dips} |"
    )


def picked_models(names: list[str], spec: str | None, sample: int) -> list[str]:
    """`--models`: all, the first N or the A-th to B-th of a seeded shuffle (a longer prefix
    extends a shorter one); without it, `--sample` models as before."""
    if spec is None:
        return random.Random(1).sample(names, min(sample, len(names)))
    if spec == "all":
        return list(names)
    order = list(names)
    random.Random(1).shuffle(order)
    a, _, b = spec.rpartition(":")
    return order[int(a or 0):int(b)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenarios", default="1,2,3,4,5,6")
    ap.add_argument("--sizes", default="100,1000")
    ap.add_argument("--sample", type=int, default=10, help="models per generated workload for (a)")
    ap.add_argument("--seeds", type=int, default=3, help="random-change draws for (b)")
    ap.add_argument("--time-limit", type=float, default=10.0)
    ap.add_argument("--extra-gpus", type=int, default=0, help="--max-extra-gpus of every re-plan")
    ap.add_argument("--bound", action="store_true", help="print the slice-counting bound on changes")
    ap.add_argument("--exact", type=float, default=0.0, metavar="S",
                    help="with --bound: also the fewest changes possible, the program given S seconds a case")
    ap.add_argument("--only", default="one,random", help="which changes: one, random or both")
    ap.add_argument("--cache", type=Path, help="folder keeping the fresh plans between runs")
    ap.add_argument("--cases", action="store_true", help="list each case's changed segments in its row")
    ap.add_argument("--no-dips", action="store_true", help="skip the transition schedules and their dips")
    ap.add_argument("--models", help="generated workloads' models for (a): all, N or A:B of a seeded shuffle")
    ap.add_argument("--rows", type=Path, help="JSON-lines file of single-model cases: appended, resumed from")
    args = ap.parse_args()
    global EXTRA, BOUND, CACHE, DIPS, CASES, ROWS, EXACT
    EXTRA, BOUND, CACHE, DIPS, CASES = args.extra_gpus, args.bound, args.cache, not args.no_dips, args.cases
    EXACT = args.exact
    ROWS = args.rows
    if CACHE is not None:
        CACHE.mkdir(parents=True, exist_ok=True)
    base = base_profiles()
    print("| workload | changes | cases | median changed | max changed | max changed / changed model | "
          "others moved (avoidable) | GPUs = fresh | median time | max time | cases with a dip (worst) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    all_single = []
    for k in [int(x) for x in args.scenarios.split(",") if x]:
        services = load_scenario(example_dir() / "SLO", k, list(base))
        rows = single_changes(base, services, [s.model for s in services], args.time_limit)
        all_single += rows
        print(summary(f"scenario {k}", "one model", rows), flush=True)
        print(summary(f"scenario {k}", "20 % random", random_changes(base, services, args.seeds, args.time_limit)),
              flush=True)
    if all_single:
        print(summary("scenarios 1-6", "one model", all_single), flush=True)
    for n in [int(x) for x in args.sizes.split(",") if x]:
        profiles, services = random_services(n, 0, base=base)
        profiles = loaded_like(profiles, base)
        models = picked_models([s.model for s in services], args.models, args.sample)
        if "one" in args.only:
            label = f"{n:,} services"
            print(summary(label, "one model", single_changes(profiles, services, models, args.time_limit, label),
                          n), flush=True)
        if "random" in args.only:
            print(summary(f"{n:,} services", "20 % random", random_changes(profiles, services, args.seeds,
                                                                          args.time_limit)), flush=True)
    for line in NOTES:
        print(f"\n{line}")


if __name__ == "__main__":
    main()
