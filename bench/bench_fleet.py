"""Fleet planning: 1,000 services over a 64-node fleet of three GPU types (A100-80GB, H100-80GB,
H200), with prices and reserved slots; then the same services at 120% of what the fleet can serve,
in three tiers.

Run: .venv/bin/python bench/bench_fleet.py [--services 1000] [--seed 0] [--time-limit 60] [--capacity] [--replan]
Prints Markdown; docs/benchmarks.md records its figures. The services are bench/common.py's (the
eleven embedded profiles cycled, random SLOs), with rates scaled by --rate-scale so the fleet is
large enough. Only A100-80GB profiles are measured: the H100 and H200 profiles are synthetic, each
model `speed` times as fast (throughput x speed, latency / speed) with a per-model speed drawn from
a seeded generator, so which type is cheapest differs by model. Every plan is checked with
`verify` against each GPU type's profiles.
"""

from __future__ import annotations

import argparse
import platform
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import base_profiles, random_services  # noqa: E402

from parvagpu.core.errors import Unservable  # noqa: E402
from parvagpu.core.fleet import Fleet, FleetNode, Reservation  # noqa: E402
from parvagpu.core.model import Profile  # noqa: E402
from parvagpu.planning.fleet import FleetRequest, plan_fleet  # noqa: E402
from parvagpu.verify import verify  # noqa: E402

# (type, nodes, GPUs per node, price per GPU-hour, speed range over the A100 for the synthetic profiles)
FLEET = (("A100-80GB", 24, 8, 2.0, (1.0, 1.0)), ("H100-80GB", 24, 8, 3.0, (1.2, 2.0)), ("H200", 16, 8, 3.6, (1.4, 2.4)))


def synthetic(base: dict[str, Profile], lo: float, hi: float, seed: int) -> dict[str, Profile]:
    """Each base model's points as if measured on a GPU `speed` times as fast (speed per model)."""
    rng = random.Random(seed)
    out = {}
    for m in sorted(base):
        speed = rng.uniform(lo, hi)
        out[m] = Profile(m, tuple(
            replace(q, throughput=round(q.throughput * speed, 3), latency_s=round(q.latency_s / speed, 6))
            for q in base[m].points), f"synthetic x{speed:.2f}")
    return out


def fleet() -> Fleet:
    nodes = []
    for kind, count, gpus, price, _ in FLEET:
        for k in range(count):
            # Every fourth node lends a 3g slot of its GPU 0 to someone else; every eighth a whole GPU.
            res = (Reservation(0, 4, 3),) if k % 4 == 0 else ()
            res += (Reservation(gpus - 1),) if k % 8 == 1 else ()
            nodes.append(FleetNode(f"{kind.lower()}-{k}", kind, gpus, price, res))
    return Fleet(tuple(nodes))


def inputs(n: int, seed: int, scale: float):
    base = base_profiles()
    by_base = {kind: synthetic(base, lo, hi, seed + i) for i, (kind, *_, (lo, hi)) in enumerate(FLEET)}
    profiles, services = random_services(n, seed=seed, base=base)
    # Services are named <base model>-<i>; every type's profile of a service is its base model's.
    per_type = {kind: {m: Profile(m, b[m.rsplit("-", 1)[0]].points) for m in profiles} for kind, b in by_base.items()}
    return per_type, tuple(replace(s, rate=round(s.rate * scale, 1)) for s in services)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rate-scale", type=float, default=0.3)
    ap.add_argument("--time-limit", type=float, default=60.0)
    ap.add_argument("--gap", type=float, default=0.01)
    ap.add_argument("--capacity", action="store_true", help="also search the largest equal share at 3x the demand")
    ap.add_argument("--replan", action="store_true", help="also re-plan from the plan with ten services at 1.5x")
    args = ap.parse_args()
    f = fleet()
    per_type, services = inputs(args.services, args.seed, args.rate_scale)
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}")
    print(f"fleet: {len(f.nodes)} nodes, {f.total_gpus} GPUs "
          f"({', '.join(f'{c} x {g} {k} at {p}/h' for k, c, g, p, _ in FLEET)}), "
          f"{sum(len(n.reserved) for n in f.nodes)} reservations")

    t0 = time.perf_counter()
    plan = plan_fleet(FleetRequest(services, per_type, f, time_limit=args.time_limit, mip_rel_gap=args.gap))
    t_full = time.perf_counter() - t0
    assert verify(plan, per_type["A100-80GB"], type_profiles=per_type) == []
    st = dict(plan.stats)
    used = {t: len({s.gpu for s in plan.segments if plan.gpu_type_of(s.gpu) == t}) for t in f.types}
    print("\n| services | demand req/s | GPUs used (A100/H100/H200) | price/h | proven bound | gap | time s |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {len(services)} | {sum(s.rate for s in services):,.0f} | {plan.gpus_used} "
          f"({'/'.join(str(used[t]) for t in f.types)}) | {st['price_per_hour']:.1f} | "
          f"{st['price_lower_bound']:.1f} | {st['price_gap']:.2%} | {t_full:.1f} |")

    if args.replan:
        replan_row(plan, services, per_type, f, args)

    # What the fleet can serve: the largest equal share found of every rate (one tier), at 3x the demand.
    over = tuple(replace(s, rate=round(s.rate * 3, 1)) for s in services)
    if args.capacity:
        t0 = time.perf_counter()
        share = plan_fleet(FleetRequest(over, per_type, f, time_limit=args.time_limit * 5, allow_partial=True))
        t_share = time.perf_counter() - t0
        frac = min(share.served_rate(s) / s.rate for s in over)
        assert verify(share, per_type["A100-80GB"], type_profiles=per_type) == []
        up = dict(share.stats)["share_upper_bound"]
        print(f"\nfleet capacity: {frac:.3f} x (3 x demand) = {3 * frac:.2f} x demand, proven at most {up:.3f} "
              f"x (3 x demand) ({t_share:.1f} s)")

    # 120% of 3x the demand, which the fleet provably cannot serve (the full plan is proven infeasible),
    # so more than 120% of what it can serve; in three tiers (30% tier 0, 30% tier 1, 40% tier 2).
    try:
        plan_fleet(FleetRequest(over, per_type, f, time_limit=args.time_limit))
        raise AssertionError("3x the demand fits the fleet: raise the factor")
    except Unservable as exc:
        assert "proven" in str(exc), exc
    load = tuple(
        replace(s, rate=round(s.rate * 3 * 1.2, 1), tier=0 if i % 10 < 3 else 1 if i % 10 < 6 else 2)
        for i, s in enumerate(services)
    )
    t0 = time.perf_counter()
    tiered = plan_fleet(FleetRequest(load, per_type, f, time_limit=args.time_limit * 2, allow_partial=True))
    t_tier = time.perf_counter() - t0
    assert verify(tiered, per_type["A100-80GB"], type_profiles=per_type) == []
    print("\n| tier | services | demand req/s | served req/s | served share (min..max) |")
    print("|---|---|---|---|---|")
    for tier in (0, 1, 2):
        these = [s for s in load if s.tier == tier]
        shares = [tiered.served_rate(s) / s.rate for s in these]
        print(f"| {tier} | {len(these)} | {sum(s.rate for s in these):,.0f} | "
              f"{sum(tiered.served_rate(s) for s in these):,.0f} | {min(shares):.4f}..{max(shares):.4f} |")
    top_full = all(tiered.served_rate(s) == s.rate for s in load if s.tier == 0)
    st = dict(tiered.stats)
    print(f"\n120% load: {tiered.gpus_used} GPUs, price {st['price_per_hour']:.1f}/h, "
          f"tier share {st.get('share', 1):.4f} (proven at most {st.get('share_upper_bound', 1):.4f}), "
          f"every tier-0 service fully served: {top_full}, {t_tier:.1f} s")
    assert top_full


def replan_row(running, services, per_type, f: Fleet, args) -> None:
    """Re-plan from the plan after every hundredth service (ten) grew by half."""
    from parvagpu.planning.fleet_replan import replan_fleet

    grown = tuple(replace(s, rate=round(s.rate * 1.5, 1)) if i % 100 == 7 else s for i, s in enumerate(services))
    t0 = time.perf_counter()
    plan = replan_fleet(FleetRequest(grown, per_type, f, time_limit=args.time_limit, mip_rel_gap=args.gap), running)
    took = time.perf_counter() - t0
    assert verify(plan, per_type["A100-80GB"], type_profiles=per_type) == []
    st = dict(plan.stats)
    chosen = next(k for k in st if k.startswith("replan_"))
    print("\n| re-plan | price/h (keep / fresh) | changed segments (added + removed) | chosen | time s |")
    print("|---|---|---|---|---|")
    print(f"| ten services x1.5 | {st['price_per_hour']:.1f} ({st.get('keep_price_per_hour', float('nan')):.1f} / "
          f"{st['fresh_price_per_hour']:.1f}) | {st['changed_segments']:.0f} ({len(plan.transition.added)} + "
          f"{len(plan.transition.removed)}) of {len(running.segments)} running | {chosen} | {took:.1f} |")


if __name__ == "__main__":
    main()
