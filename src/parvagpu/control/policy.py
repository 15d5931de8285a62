"""The re-plan policy: pure functions from what was observed to a decision with its reason.

Per model the plan provisions a *planned rate* p (the rate it was planned for) and so a capacity
C >= p (the sum of its segments' throughputs). With the observed arrival rate r:

- **headroom** h: a model is (re-)planned for r x (1 + h_m), its own headroom h_m, which starts at
  h and is raised by the attainment rule (below): serving segments differ in how close to their
  capacity they still meet the SLO (one small process with a tight SLO needs far more room than
  thirty pooled ones), so what a model needs is learned from its misses and kept;
- **hysteresis band**: the model is left alone while r x (1 + h_min) <= C (at least h_min headroom
  left) and r x (1 + h_m) >= p x (1 - b) (not over-provisioned by more than the band b). Leaving the
  band upwards is "up", downwards "down"; inside it nothing moves, so noise does not re-plan (a
  model that needs more than h_min is re-planned up by the attainment rule instead);
- **attainment**: a window's SLO attainment below the target re-plans the model up, for
  max(r, p) x (1 + h), even inside the band (capacity that looks sufficient but is not), but never
  above r x (1 + h_max), and not at all while its capacity already exceeds r x (1 + h_max): where
  more capacity does not help (a single small segment whose queue loses requests at any load), the
  model is not re-planned again and again. The model's headroom becomes what that re-plan gives
  it (wanted / r - 1), so later band re-plans keep it instead of undoing it;
- **dwell**: a model's planned rate changes at most once per `dwell_s`;
- **cool-down**: re-plans are at least `cooldown_s` apart, and none starts while a transition runs;
  a refused re-plan counts as one (it is tried again, with the rates then observed, after the
  cool-down, not at every tick);
- **dips** (`transition_verdict`): a re-plan whose checked make-before-break schedule still dips (a
  model below min(old rate, new rate) at some step, where the slots force an old segment out before
  its replacement fits) is run (`dips: run`, the default; each dip logged) or refused (`dips:
  refuse`, the running plan kept); any other problem the checks find always refuses.

Every model that wants a change and is past its dwell goes into the same re-plan; the others keep
their planned rate, so a move-aware planner keeps their segments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from parvagpu.core.errors import ParvaError
from parvagpu.verify import dipping_model


DIP_CHOICES = ("run", "refuse")


@dataclass(frozen=True)
class PolicyConfig:
    headroom: float = 0.25  # h: plan for observed x (1 + h)
    min_headroom: float = 0.08  # h_min: re-plan up when less headroom than this is left
    max_headroom: float = 0.6  # h_max: attainment misses raise the plan up to r x (1 + h_max)
    band: float = 0.30  # b: re-plan down when r (1 + h) < p (1 - b)
    attainment_target: float = 0.999
    dwell_s: float = 600.0  # per model, between changes of its planned rate
    cooldown_s: float = 120.0  # between re-plans
    min_rate: float = 1.0  # a model is never planned below this rate (req/s)
    trend_horizon_s: float = 0.0  # T: on a rising trend plan for the rate forecast T ahead (0: no trend)
    trend_min: float = 0.02  # a trend is clear when it moves the rate by this share of r within T
    falling_band: float | None = None  # b_f: the down band on a clearly falling trend (None: b)
    dips: str = "run"  # a transition whose schedule still dips: "run" it (dips logged) or "refuse" it

    def __post_init__(self) -> None:
        if self.dips not in DIP_CHOICES:
            raise ParvaError(f"dips must be {' or '.join(DIP_CHOICES)}, got {self.dips!r}")
        if not 0 <= self.min_headroom <= self.headroom <= self.max_headroom:
            raise ParvaError("need 0 <= min headroom <= headroom <= max headroom, got "
                             f"{self.min_headroom}, {self.headroom}, {self.max_headroom}")
        if not 0 <= self.band < 1:
            raise ParvaError(f"band must be in [0, 1), got {self.band}")
        if not 0 < self.attainment_target <= 1:
            raise ParvaError(f"attainment target must be in (0, 1], got {self.attainment_target}")
        if self.dwell_s < 0 or self.cooldown_s < 0:
            raise ParvaError("dwell and cool-down must be >= 0 s")
        if not self.min_rate > 0:
            raise ParvaError(f"min rate must be positive, got {self.min_rate}")
        if self.trend_horizon_s < 0 or self.trend_min < 0:
            raise ParvaError("trend horizon and trend threshold must be >= 0")
        if self.falling_band is not None and not 0 <= self.falling_band < 1:
            raise ParvaError(f"falling band must be in [0, 1), got {self.falling_band}")


@dataclass(frozen=True)
class ModelView:
    """One model as the policy sees it at one moment."""

    model: str
    observed_rate: float  # req/s over the rate window
    attainment: float | None  # share of the window's requests answered within the SLO; None: too few
    planned_rate: float  # p
    capacity: float  # C, of the segments the plan gives it
    last_change_s: float = -math.inf  # when its planned rate last changed
    headroom: float | None = None  # h_m, what the attainment rule raised it to; None: the config's h
    trend: float | None = None  # the observed rate's slope (req/s per s); None: not known


@dataclass(frozen=True)
class Want:
    """What one model asks for: a new planned rate (None: keep) and why."""

    model: str
    rate: float | None
    reason: str
    headroom: float | None = None  # the model's new headroom, when the attainment rule raised it


@dataclass(frozen=True)
class Decision:
    """A decision record: when, what was seen, what was decided and why."""

    time_s: float
    replan: bool
    reason: str
    targets: tuple[tuple[str, float], ...] = ()  # model -> new planned rate, for a re-plan
    held: tuple[tuple[str, str], ...] = ()  # models that want a change but wait (dwell), and why
    observation: tuple[ModelView, ...] = field(default=(), compare=False)
    headrooms: tuple[tuple[str, float], ...] = ()  # model -> its raised headroom (attainment re-plans)

    def to_dict(self) -> dict:
        return {
            "time_s": self.time_s,
            "replan": self.replan,
            "reason": self.reason,
            "targets": {m: round(r, 6) for m, r in self.targets},
            "headrooms": {m: round(h, 6) for m, h in self.headrooms},
            "held": dict(self.held),
            "observation": {
                v.model: {"rate": round(v.observed_rate, 6), "attainment": v.attainment,
                          "planned_rate": v.planned_rate, "capacity": v.capacity}
                for v in self.observation
            },
        }


def target_rate(cfg: PolicyConfig, rate: float, headroom: float | None = None) -> float:
    """The rate a model is planned for when its observed rate is `rate` (and its headroom
    `headroom`, default the config's)."""
    return max(cfg.min_rate, rate * (1.0 + model_headroom(cfg, headroom)))


def model_headroom(cfg: PolicyConfig, headroom: float | None) -> float:
    """A model's headroom: the config's h unless raised, never outside [h, h_max]."""
    return cfg.headroom if headroom is None else min(cfg.max_headroom, max(cfg.headroom, headroom))


def queueing_headroom(cfg: PolicyConfig, curve: tuple[tuple[float, float], ...], tolerance: float = 0.001) -> float | None:
    """A model's headroom from what its serving segments need. `curve` holds (load, attainment)
    points of those segments (load = rate / capacity; from a queueing model or the simulator).
    Going up from the lowest load, rho* is the last load before the first that misses the goal:
    the attainment target, or where no load meets it, the best the segments reach less
    `tolerance` (beyond that more capacity does not help, so it is not bought). The headroom keeps
    the load at rho* with h for the rate's noise on top: (1 + h) / rho* - 1, within [h, h_max].
    None when the curve is empty."""
    if not curve:
        return None
    points = sorted(curve)
    goal = min(cfg.attainment_target, max(a for _, a in points) - tolerance)
    rho = points[0][0]
    for load, a in points:
        if a < goal:
            break
        rho = load
    return model_headroom(cfg, (1.0 + cfg.headroom) / rho - 1.0)


def trend_of(cfg: PolicyConfig, v: ModelView) -> str:
    """"rising", "falling" or "flat": whether the slope moves the rate by at least `trend_min` x r
    within the horizon T (a model without a known slope, or T = 0, is flat)."""
    if v.trend is None or cfg.trend_horizon_s <= 0:
        return "flat"
    change = v.trend * cfg.trend_horizon_s
    if change >= cfg.trend_min * v.observed_rate and change > 0:
        return "rising"
    if change <= -cfg.trend_min * v.observed_rate and change < 0:
        return "falling"
    return "flat"


def forecast(cfg: PolicyConfig, v: ModelView, trend: str | None = None) -> float:
    """The rate a model is planned from: on a rising trend the rate forecast T ahead (the dwell: the
    plan must last until the model may change again), else the observed rate (a falling trend is
    not subtracted: the rate it forecasts has not come yet)."""
    if (trend or trend_of(cfg, v)) == "rising":
        return v.observed_rate + v.trend * cfg.trend_horizon_s
    return v.observed_rate


def down_band(cfg: PolicyConfig, v: ModelView, trend: str | None = None) -> float:
    """The band below the planned rate: b, or b_f on a clearly falling trend (the rate is not
    noise-wandering back up, so the plan may follow it sooner)."""
    if cfg.falling_band is not None and (trend or trend_of(cfg, v)) == "falling":
        return cfg.falling_band
    return cfg.band


def judge(cfg: PolicyConfig, v: ModelView) -> Want:
    """Does this model's demand leave its band (or miss its attainment)? Dwell is not applied here.
    The trend is found once for the forecast and the band; a model in band gets the one `Want` kept
    for it (the controller asks every model at every tick, and most are in band)."""
    h = model_headroom(cfg, v.headroom)
    trend = trend_of(cfg, v)
    ahead = forecast(cfg, v, trend)
    if v.attainment is not None and v.attainment < cfg.attainment_target:
        most = max(cfg.min_rate, v.observed_rate * (1.0 + cfg.max_headroom))
        want = min(target_rate(cfg, max(ahead, v.planned_rate)), most)
        if want > v.planned_rate and v.capacity < most:  # capacity beyond `most`: not short of it
            raised = max(h, want / v.observed_rate - 1.0) if v.observed_rate > 0 else h
            return Want(v.model, want, f"attainment {v.attainment:.4%} < {cfg.attainment_target:.2%}",
                        model_headroom(cfg, raised))
    if v.observed_rate * (1.0 + cfg.min_headroom) > v.capacity:
        return Want(v.model, target_rate(cfg, ahead, h),
                    f"up: rate {v.observed_rate:.1f}/s leaves < {cfg.min_headroom:.0%} headroom of capacity {v.capacity:.1f}/s"
                    + (f", forecast {ahead:.1f}/s" if ahead != v.observed_rate else ""))
    want = target_rate(cfg, ahead, h)
    band = down_band(cfg, v, trend)
    if want < v.planned_rate * (1.0 - band) and want < v.planned_rate:
        return Want(v.model, want,
                    f"down: rate {v.observed_rate:.1f}/s needs {want:.1f}/s, below {1 - band:.0%} of planned {v.planned_rate:.1f}/s"
                    + (" (falling)" if band != cfg.band else ""))
    keep = _IN_BAND.get(v.model)
    if keep is None:
        if len(_IN_BAND) >= 100_000:
            _IN_BAND.clear()
        keep = _IN_BAND[v.model] = Want(v.model, None, "in band")
    return keep


_IN_BAND: dict[str, Want] = {}  # model -> its "in band" Want (frozen: one per model serves every tick)


def dwell_left(cfg: PolicyConfig, now: float, v: ModelView) -> float:
    """Seconds until the model's planned rate may change again (0: it may now)."""
    return max(0.0, v.last_change_s + cfg.dwell_s - now)


def cooldown_left(cfg: PolicyConfig, now: float, last_replan_s: float) -> float:
    return max(0.0, last_replan_s + cfg.cooldown_s - now)


def decide(
    cfg: PolicyConfig,
    now: float,
    views: tuple[ModelView, ...],
    last_replan_s: float = -math.inf,
    transition_running: bool = False,
) -> Decision:
    """The policy at time `now`: re-plan (with the models' new planned rates) or hold, and why."""
    views = tuple(views)
    wants = [w for w in (judge(cfg, v) for v in views) if w.rate is not None]
    if not wants:
        return Decision(now, False, "every model in band", observation=views)
    if transition_running:
        return Decision(now, False, "a transition is running", held=tuple((w.model, w.reason) for w in wants),
                        observation=views)
    left = cooldown_left(cfg, now, last_replan_s)
    if left > 0:
        return Decision(now, False, f"cool-down: {left:.0f} s left", held=tuple((w.model, w.reason) for w in wants),
                        observation=views)
    by_model = {v.model: v for v in views}
    go, held = [], []
    for w in wants:
        wait = dwell_left(cfg, now, by_model[w.model])
        if wait > 0:
            held.append((w.model, f"dwell: {wait:.0f} s left ({w.reason})"))
        else:
            go.append(w)
    if not go:
        return Decision(now, False, "every model that wants a change is within its dwell", held=tuple(held),
                        observation=views)
    reason = "; ".join(f"{w.model}: {w.reason}" for w in go)
    return Decision(now, True, reason, tuple((w.model, w.rate) for w in go), tuple(held), views,
                    tuple((w.model, w.headroom) for w in go if w.headroom is not None))


@dataclass(frozen=True)
class Verdict:
    """What to do with a checked re-plan: run its transition or keep the running plan, and why."""

    run: bool
    reason: str  # "runs", "runs with dips", "dips refused" or "check failed"
    problems: tuple[str, ...] = ()  # the checks' findings: what refused it, or the dips it runs with

    @property
    def dipped(self) -> bool:
        return self.reason in ("runs with dips", "dips refused")


def transition_verdict(cfg: PolicyConfig, problems, dipping: set[str]) -> Verdict:
    """The one decision on a checked re-plan, shared by the live controller and the replay.
    `problems`: what `verify` and `verify_schedule` found; `dipping`: the models the schedule
    itself says dip. A finding that one of those models is below min(old rate, new rate) after a
    step is a dip, run or refused as `cfg.dips` says; anything else (a wrong plan, an illegal or
    missing step, a dip the schedule did not declare) refuses, whatever the setting."""
    dips, other = [], []
    for p in problems:
        (dips if dipping_model(p) in dipping else other).append(p)
    if other:
        return Verdict(False, "check failed", tuple(other + dips))
    if not dips:
        return Verdict(True, "runs")
    if cfg.dips == "refuse":
        return Verdict(False, "dips refused", tuple(dips))
    return Verdict(True, "runs with dips", tuple(dips))


def policy_from_settings(path, part: dict) -> PolicyConfig:
    """The `policy:` section of a settings file (read the same way by the live controller and the
    replay): numbers, and `dips` one of DIP_CHOICES; one line naming the file on a bad value."""
    for k, v in part.items():
        text = k == "dips"
        if isinstance(v, bool) or not isinstance(v, str if text else (int, float)):
            raise ParvaError(f"{path}: policy.{k} must be {' or '.join(DIP_CHOICES) if text else 'a number'}")
    try:
        return PolicyConfig(**{k: v if k == "dips" else float(v) for k, v in part.items()})
    except (TypeError, ValueError, ParvaError) as exc:
        raise ParvaError(f"{path}: {exc}") from None


def settings_section(path, doc: dict, section: str, keys: set[str]) -> dict:
    """One section of a controller settings file (policy, control, costs, replay): a mapping whose
    keys are all known, or one line naming the file and the section. Shared by the live controller
    and the trace replay, which read the same file."""
    part = doc.get(section) or {}
    if not isinstance(part, dict):
        raise ParvaError(f"{path}: {section} must be a mapping")
    unknown = set(part) - keys
    if unknown:
        raise ParvaError(f"{path}: unknown {section} keys: {', '.join(sorted(map(str, unknown)))} "
                         f"(known: {', '.join(sorted(keys))})")
    return part
