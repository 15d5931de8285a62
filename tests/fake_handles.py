"""Fake Ray Serve handles for the ingress tests: a response awaitable once and cancellable, and a
segment handle whose calls follow a script ('ok', 'die' raises, 'hang' sleeps) and whose probe
(`pid.remote()`) answers while `alive`."""

from __future__ import annotations

import asyncio


class Resp:
    """A deployment response: awaitable once, cancellable."""

    def __init__(self, coro) -> None:
        self.coro, self.cancelled = coro, False

    def __await__(self):
        return self.coro.__await__()

    def cancel(self) -> None:
        self.cancelled = True


class _Method:
    """A deployment method: `remote()` starts a call."""

    def __init__(self, fn) -> None:
        self.fn = fn

    def remote(self, *args):
        return Resp(self.fn(*args))


class ScriptedHandle:
    """Calls follow `script` (the last entry repeats); a 'hang' sleeps `hang_s`, an answer
    reports batches of `batch`."""

    def __init__(self, *script: str, hang_s: float = 3600.0, batch: int = 1) -> None:
        self.script, self.calls = list(script), 0
        self.hang_s, self.batch = hang_s, batch
        self.alive, self.probes = True, 0
        self.pid = _Method(self._pid)

    async def _pid(self) -> int:
        self.probes += 1
        if not self.alive:
            raise RuntimeError("actor died")
        return 1

    def remote(self, payload):
        what = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1

        async def go():
            if what == "die":
                raise RuntimeError("actor died")
            if what == "hang":
                await asyncio.sleep(self.hang_s)
            return {"queue_ms": 1.0, "compute_ms": 2.0, "batch": self.batch}

        return Resp(go())


def one_segment_ingress(handle, limit: int = 1, rate: float = 1.0, batch: int = 1):
    """An ingress for one model `m` served by one segment `m-s0` behind `handle`."""
    from parvagpu.serving.ingress import Ingress

    seg = {"name": "m-s0", "throughput": 10.0, "limit": limit, "batch": batch, "procs": 1, "wait_s": 0.0,
           "latency_ms": 10.0}
    spec = {"m": {"rate": rate, "latency_ms": 100.0, "capacity": 10.0, "segments": [seg]}}
    return Ingress(spec, {"m-s0": handle})


class GatedHandle:
    """A segment handle whose calls wait until `open()` (or answer at once when opened first);
    `calls` counts the requests it received."""

    def __init__(self, name: str = "") -> None:
        self.name, self.calls, self.gate = name, 0, asyncio.Event()

    def open(self) -> None:
        self.gate.set()

    def remote(self, payload):
        self.calls += 1

        async def go():
            await self.gate.wait()
            return {"queue_ms": 0.0, "compute_ms": 1.0, "batch": 1}

        return Resp(go())


def seg_doc(name: str, throughput: float = 10.0, limit: int = 4, batch: int = 1) -> dict:
    """One segment as the ingress takes it (`app.spec_to_dict`'s form)."""
    return {"name": name, "throughput": throughput, "limit": limit, "batch": batch, "procs": 1, "wait_s": 0.0,
            "latency_ms": 10.0}
