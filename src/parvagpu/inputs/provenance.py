"""Where a plan's profiles came from, and whether the profiles at hand are the same ones.

The hash is over the points as loaded (size, batch, processes, throughput, latency, in file order,
packed as 64-bit little-endian integers and floats), not over the file's bytes, so reformatting a
CSV does not change it but any changed figure does.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from parvagpu.core.model import Profile, Provenance

EMBEDDED = "embedded:sc24-a100-80gb"
META_SUFFIX = ".meta.json"  # written next to each CSV by `parvagpu profile`


def profile_digest(profile: Profile) -> str:
    """sha256 over the profile's points packed as binary rows: made from its columns at once, no
    text formatting per point (thousands of profiles hash in well under a second)."""
    return hashlib.sha256(profile.columns.packed()).hexdigest()


def overall_digest(models: dict[str, str]) -> str:
    return hashlib.sha256("".join(f"{m}:{d}\n" for m, d in sorted(models.items())).encode()).hexdigest()


def measured_on(profiles: list[Profile]) -> str | None:
    """The GPU (or CPU) named by the profiler's metadata files, when they all name the same one."""
    seen = set()
    for prof in profiles:
        source = Path(prof.source)
        try:
            if source.with_name(source.stem + META_SUFFIX).stat().st_size > 1 << 20:
                return None
            meta = json.loads(source.with_name(source.stem + META_SUFFIX).read_text(encoding="utf-8"))
            system = meta["system"]
            gpu = system.get("gpu")
            name = gpu["name"] if gpu else f"cpu: {system['host']['cpu']}"
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
            return None
        if not isinstance(name, str):
            return None
        seen.add(name)
    return seen.pop() if len(seen) == 1 else None


def provenance(profiles: dict[str, Profile], models: list[str], source: Path | None) -> Provenance:
    """The provenance of a plan over `models`, whose profiles were loaded from `source`
    (None: the embedded example)."""
    digests = {m: profile_digest(profiles[m]) for m in sorted(set(models)) if m in profiles}
    where = EMBEDDED if source is None else str(Path(source).resolve())
    measured = None if source is None else measured_on([profiles[m] for m in digests])
    return Provenance(where, overall_digest(digests), tuple(digests.items()), measured)


def mismatches(recorded: Provenance, profiles: dict[str, Profile]) -> list[str]:
    """Models whose profile at hand differs from the one the plan was made with."""
    return [m for m, d in recorded.models if m in profiles and profile_digest(profiles[m]) != d]
