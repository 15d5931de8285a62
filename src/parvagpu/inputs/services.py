"""Reading and validating what to serve: the seed SLO CSV pair or a services file.

- `SLO_req_rate.csv` / `SLO_latency.csv`: no header, one row per scenario, one column per model in
  sorted profile-file order, `N/A` = model absent from that scenario.
- A services file (YAML or JSON): a list of `{model, rate, latency_ms}`, or a mapping with a
  `services:` key holding that list (and an optional `version: v1`).

Decimal values are kept as given; `truncate=True` mimics the reference scheduler, which parses both
files with C `atoi` (418.5 -> 418), for parity checks.
"""

from __future__ import annotations

import math
from pathlib import Path

from parvagpu.fileio.reader import read_csv_rows, read_document
from parvagpu.core.errors import ParvaError
from parvagpu.core.limits import MAX_LATENCY_MS, MAX_RATE
from parvagpu.core.model import Profile, Service

RATE_FILE = "SLO_req_rate.csv"
LATENCY_FILE = "SLO_latency.csv"


def _read_rows(path: Path) -> list[list[str]]:
    return [row for row in read_csv_rows(path, "SLO file") if row and any(c.strip() for c in row)]


def _value(text: str, where: str, what: str, truncate: bool) -> float | None:
    text = text.strip()
    if text.upper() == "N/A":
        return None
    shown = text[:40]
    try:
        value = float(text)
    except ValueError:
        raise ParvaError(f"{where}: {what} is not a number or N/A: {shown!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ParvaError(f"{where}: {what} must be a positive number, got {shown!r}")
    top = MAX_RATE if what == "rate" else MAX_LATENCY_MS
    if value > top:
        raise ParvaError(f"{where}: {what} {shown} is above the limit {top:g}")
    if truncate:
        value = float(math.trunc(value))
        if value <= 0:
            raise ParvaError(f"{where}: {what} {text!r} truncates to 0")
    return value


def scenario_count(slo_dir: Path) -> int:
    return len(_read_rows(slo_dir / RATE_FILE))


def load_scenario(
    slo_dir: Path, scenario: int, models: list[str], truncate: bool = False
) -> tuple[Service, ...]:
    """Services of scenario `scenario` (1-based); `models` are the profile names in sorted order."""
    rate_path, lat_path = slo_dir / RATE_FILE, slo_dir / LATENCY_FILE
    for p in (rate_path, lat_path):
        if not p.is_file():
            raise ParvaError(f"{p}: SLO file not found")
    rates, lats = _read_rows(rate_path), _read_rows(lat_path)
    if len(rates) != len(lats):
        raise ParvaError(
            f"{slo_dir}: {RATE_FILE} has {len(rates)} scenarios but {LATENCY_FILE} has {len(lats)}"
        )
    if not 1 <= scenario <= len(rates):
        raise ParvaError(f"{rate_path}: scenario {scenario} out of range 1..{len(rates)}")
    services = []
    rate_row, lat_row = rates[scenario - 1], lats[scenario - 1]
    for path, row in ((rate_path, rate_row), (lat_path, lat_row)):
        if len(row) != len(models):
            raise ParvaError(
                f"{path}:{scenario}: {len(row)} columns but {len(models)} profiles ({', '.join(models)})"
            )
    for model, r_text, l_text in zip(models, rate_row, lat_row):
        rate = _value(r_text, f"{rate_path}:{scenario} ({model})", "rate", truncate)
        lat = _value(l_text, f"{lat_path}:{scenario} ({model})", "latency", truncate)
        if (rate is None) != (lat is None):
            raise ParvaError(
                f"{slo_dir}: scenario {scenario}, model {model}: rate and latency must both be N/A or both set"
            )
        if rate is not None and lat is not None:
            services.append(Service(model, rate, lat))
    if not services:
        raise ParvaError(f"{slo_dir}: scenario {scenario} has no services (all N/A)")
    return tuple(services)


def _keys(keys: set) -> str:
    """Keys as one line: a key may hold a newline or be very long."""
    return ", ".join(sorted(str(k) for k in keys)).encode("unicode_escape").decode("ascii")[:200]


def load_services(path: Path, truncate: bool = False) -> tuple[Service, ...]:
    """A services file: a list of {model, rate, latency_ms, tier (optional: 0, the most important,
    by default)}."""
    return services_from_document(read_document(path, "services file"), path, truncate)


def services_from_document(data, path, truncate: bool = False) -> tuple[Service, ...]:
    """A parsed services document (`path` names it in messages), checked as `load_services` does."""
    if isinstance(data, dict):
        unknown = set(data) - {"version", "services"}
        if unknown:
            raise ParvaError(f"{path}: unknown top-level keys: {_keys(unknown)}")
        if data.get("version", "v1") != "v1":
            raise ParvaError(f"{path}: unsupported version {data.get('version')!r} (expected v1)")
        data = data.get("services")
    if not isinstance(data, list) or not data:
        raise ParvaError(f"{path}: expected a non-empty list of services {{model, rate, latency_ms}}")
    services: list[Service] = []
    seen: set[str] = set()
    for i, entry in enumerate(data, start=1):
        where = f"{path}: service {i}"
        if not isinstance(entry, dict):
            raise ParvaError(f"{where}: expected a mapping with model, rate, latency_ms")
        missing = {"model", "rate", "latency_ms"} - set(entry)
        if missing:
            raise ParvaError(f"{where}: missing {', '.join(sorted(missing))}")
        unknown = set(entry) - {"model", "rate", "latency_ms", "tier"}
        if unknown:
            raise ParvaError(f"{where}: unknown keys {_keys(unknown)}")
        model = entry["model"]
        if not isinstance(model, str) or not model:
            raise ParvaError(f"{where}: model must be a non-empty string")
        where = f"{path}: service {i} ({model})"
        if model in seen:
            raise ParvaError(f"{where}: model listed twice")
        seen.add(model)
        values = []
        for key in ("rate", "latency_ms"):
            v = entry[key]
            if isinstance(v, bool) or not isinstance(v, (int, float, str)):
                raise ParvaError(f"{where}: {key} must be a number")
            values.append(_value(str(v), where, key, truncate))
        if values[0] is None or values[1] is None:
            raise ParvaError(f"{where}: rate and latency_ms must be numbers")
        tier = entry.get("tier", 0)
        if isinstance(tier, bool) or not isinstance(tier, int) or tier < 0:
            raise ParvaError(f"{where}: tier must be an integer >= 0 (0 is the most important), got {tier!r}")
        services.append(Service(model, values[0], values[1], tier))
    return tuple(services)


def check_models(services: tuple[Service, ...], profiles: dict[str, Profile], source: str) -> None:
    """Every service needs a profile."""
    for s in services:
        if s.model not in profiles:
            known = ", ".join(sorted(profiles))
            raise ParvaError(f"{source}: model {s.model!r} has no profile (known: {known})")
