"""The open-loop load generator: Poisson schedule, accounting of every request, loopback only."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest

from parvagpu.core.errors import ParvaError
from parvagpu.serving.loadgen import (
    OK,
    REJECTED,
    Reply,
    Target,
    check_loopback,
    load_http,
    run_load,
    schedule,
)
from parvagpu.serving.stats import percentile, summarize


def test_schedule_is_seeded_poisson_and_bounded():
    tg = [Target("a", 200.0, 100.0), Target("b", 50.0, 100.0)]
    ev = schedule(tg, 20.0, seed=3, max_requests=100_000)
    assert ev == schedule(tg, 20.0, seed=3, max_requests=100_000)
    assert ev != schedule(tg, 20.0, seed=4, max_requests=100_000)
    counts = {m: sum(1 for _, x in ev if x == m) for m in ("a", "b")}
    assert counts["a"] == pytest.approx(4000, rel=0.06) and counts["b"] == pytest.approx(1000, rel=0.12)
    assert all(x <= y for (x, _), (y, _) in zip(ev, ev[1:]))
    assert len(schedule(tg, 20.0, seed=3, max_requests=100)) == 100


@pytest.mark.parametrize(
    "url",
    ["http://10.1.2.3:8000", "http://192.168.0.1", "http://example.com", "https://127.0.0.1:8000", "ftp://localhost"],
)
def test_only_loopback_targets(url):
    with pytest.raises(ParvaError):
        check_loopback(url)


def test_loopback_forms_accepted():
    assert check_loopback("http://127.0.0.1:8000/x") == "http://127.0.0.1:8000"
    assert check_loopback("http://localhost:1") == "http://localhost:1"
    assert check_loopback("http://127.8.9.10") == "http://127.8.9.10"
    assert check_loopback("http://[::1]:8000") == "http://[::1]:8000"


class FakeServer:
    """In-process server: `limit` requests in flight at most, each taking `service_s`; beyond the
    limit a fast 503, as the serving ingress does."""

    def __init__(self, limit: int, service_s: float) -> None:
        self.limit, self.service_s, self.inflight, self.peak = limit, service_s, 0, 0

    async def __call__(self, model: str, rid: int) -> Reply:
        if self.inflight >= self.limit:
            return Reply(REJECTED)
        self.inflight += 1
        self.peak = max(self.peak, self.inflight)
        try:
            await asyncio.sleep(self.service_s)
            return Reply(OK, {"queue_ms": 0.0, "compute_ms": 1000 * self.service_s})
        finally:
            self.inflight -= 1


def test_open_loop_counts_every_request_and_measures_latency():
    srv = FakeServer(limit=1000, service_s=0.01)
    tg = [Target("a", 100.0, 1000.0), Target("b", 40.0, 1000.0)]
    res = asyncio.run(run_load(tg, srv, duration_s=2.0, seed=1))
    by = {s.model: s for s in res.stats}
    assert res.lost == 0
    assert by["a"].sent == by["a"].ok and by["a"].sent == pytest.approx(200, rel=0.25)
    assert 10.0 <= by["a"].p50_ms < 250.0  # the 10 ms service plus event-loop noise (busy CI machines)
    assert by["a"].attainment == pytest.approx(1.0, abs=0.02)
    assert by["a"].throughput == pytest.approx(by["a"].ok / 2.0)
    assert 0.0 <= res.overhead_ms["a"]["p50"] < 240.0


def test_backpressure_503s_are_counted_not_lost():
    srv = FakeServer(limit=2, service_s=0.05)  # capacity 40/s, offered 150/s
    res = asyncio.run(run_load([Target("a", 150.0, 100.0)], srv, duration_s=2.0, seed=2))
    s = res.stats[0]
    assert s.rejected > 0.5 * s.sent and s.ok > 0
    assert s.ok + s.rejected == s.sent and s.lost == 0
    assert srv.peak <= 2
    assert s.max_ms < 1000  # admitted requests never queue: 50 ms service, bounded latency


def test_timeouts_and_sender_errors_are_counted():
    calls = {"n": 0}

    async def flaky(model: str, rid: int) -> Reply:
        calls["n"] += 1
        if rid % 3 == 0:
            raise ConnectionResetError("peer went away")
        if rid % 3 == 1:
            await asyncio.sleep(5)
        return Reply(OK)

    res = asyncio.run(run_load([Target("a", 60.0, 100.0)], flaky, duration_s=1.0, seed=0, timeout_s=0.2))
    s = res.stats[0]
    assert calls["n"] == s.sent > 0
    assert s.failed > 0 and s.timeouts > 0 and s.ok > 0
    assert s.ok + s.failed + s.timeouts == s.sent and s.lost == 0


def test_run_load_validates_bounds():
    srv = FakeServer(1, 0.0)
    for kw in ({"duration_s": 0}, {"duration_s": 1e9}, {"duration_s": 1, "max_requests": 10**9},
               {"duration_s": 1, "timeout_s": 0}):
        with pytest.raises(ParvaError):
            asyncio.run(run_load([Target("a", 1.0, 1.0)], srv, **kw))
    with pytest.raises(ParvaError):
        asyncio.run(run_load([], srv, 1.0))


def test_percentile_is_nearest_rank_and_summary_counts():
    xs = list(range(1, 101))
    assert percentile(xs, 50) == 50 and percentile(xs, 99) == 99 and percentile(xs, 100) == 100
    s = summarize("m", 10, 50, [10, 20, 60], sent=5, rejected=1, failed=1, duration_s=1)
    assert s.lost == 0 and s.within_slo == 2 and s.attainment == pytest.approx(0.4)
    assert s.to_dict()["verdict"] == "violated"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_http_against_a_loopback_server():
    """The HTTP sender against a tiny aiohttp server on 127.0.0.1: 200, 503 and 500 all counted."""
    web = pytest.importorskip("aiohttp.web")
    port = _free_port()
    seen = {"n": 0}

    async def infer(request):
        seen["n"] += 1
        body = await request.json()
        rid = body["id"]
        if rid % 5 == 0:
            return web.json_response({"error": "full"}, status=503)
        if rid % 7 == 0:
            return web.json_response({"error": "boom"}, status=500)
        return web.json_response({"timing": {"queue_ms": 1.0, "compute_ms": 2.0, "batch": 1}})

    async def models(request):
        return web.json_response({"models": [{"model": "a", "rate": 80, "latency_ms": 100}]})

    async def main():
        app = web.Application()
        app.router.add_post("/v1/models/{model}/infer", infer)
        app.router.add_get("/v1/models", models)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                None, lambda: load_http(f"http://127.0.0.1:{port}", None, 1.5, seed=5, synthetic=True))
        finally:
            await runner.cleanup()

    res = asyncio.run(main())
    s = res.stats[0]
    assert s.sent == seen["n"] > 50
    assert s.rejected > 0 and s.failed > 0 and s.ok > 0 and s.lost == 0
    assert json.loads(json.dumps(res.to_dict()))["lost"] == 0
    assert res.overhead_ms["a"]["p50"] == pytest.approx(s.p50_ms - 3.0, abs=5.0)  # latency - queue - compute


def test_http_refused_connection_is_an_error_not_a_hang():
    port = _free_port()
    pytest.importorskip("aiohttp")
    with pytest.raises(ParvaError, match="cannot connect"):
        load_http(f"http://127.0.0.1:{port}", None, 1.0)


def test_cdf_plot_is_written(tmp_path):
    pytest.importorskip("matplotlib")
    from parvagpu.serving.stats import plot_cdf

    out = tmp_path / "cdf.png"
    plot_cdf({"a": [12.0, 30.0, 55.0, 80.0], "b": [1.0, 2.0]}, {"a": 60.0, "b": 5.0}, out, "t")
    assert out.stat().st_size > 1000


def test_http_real_payloads_check_every_answer(tmp_path):
    """Real OIP requests from the model's metadata: a right answer is ok, a wrong datatype or shape
    is failed, 503 is rejected; --data tensors are sent as given."""
    web = pytest.importorskip("aiohttp.web")
    import numpy as np

    from parvagpu.serving.oip import InferRequest, decode_request, encode_response

    port = _free_port()
    seen = []

    async def infer(request):
        req = decode_request(await request.read(), request.headers.get("Inference-Header-Content-Length"))
        x = req.inputs["x"]
        seen.append(x)
        k = len(seen)
        if k % 5 == 0:
            return web.json_response({"error": "full"}, status=503)
        y = x.sum(axis=1, keepdims=True).repeat(3, axis=1)  # (n, 3) FP32 as declared
        if k % 7 == 0:
            y = y.astype(np.float64)  # wrong datatype
        elif k % 11 == 0:
            y = y[:, :2]  # wrong shape
        body, n = encode_response("a", InferRequest(req.inputs, binary_all=True), {"y": y}, ("y",), {"queue_ms": 1.0})
        return web.Response(body=body, headers={"Inference-Header-Content-Length": str(n)})

    async def meta(request):
        return web.json_response({"name": "a", "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
                                  "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}]})

    async def models(request):
        return web.json_response({"models": [{"model": "a", "rate": 60, "latency_ms": 100}]})

    def serve_and(fn):
        async def main():
            app = web.Application()
            app.router.add_post("/v2/models/a/infer", infer)
            app.router.add_get("/v2/models/a", meta)
            app.router.add_get("/v1/models", models)
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            try:
                return await asyncio.get_running_loop().run_in_executor(None, fn)
            finally:
                await runner.cleanup()

        return asyncio.run(main())

    res = serve_and(lambda: load_http(f"http://127.0.0.1:{port}", None, 1.5, seed=2))
    s = res.stats[0]
    bad = sum(1 for k in range(1, s.sent + 1) if k % 5 and (k % 7 == 0 or k % 11 == 0))
    assert s.sent == len(seen) > 40 and s.lost == 0
    assert (s.rejected, s.failed, s.ok) == (s.sent // 5, bad, s.sent - s.sent // 5 - bad)
    assert seen[0].shape == (1, 4) and seen[0].dtype == np.float32
    (tmp_path / "a").mkdir()
    np.save(tmp_path / "a" / "x.npy", np.ones((2, 4), dtype=np.float32))
    seen.clear()
    serve_and(lambda: load_http(f"http://127.0.0.1:{port}", None, 0.5, seed=2, data_dir=tmp_path))
    assert seen and all(x.tolist() == [[1.0] * 4] * 2 for x in seen)
    np.save(tmp_path / "a" / "x.npy", np.ones((2, 5), dtype=np.float32))
    with pytest.raises(ParvaError, match="does not fit"):
        serve_and(lambda: load_http(f"http://127.0.0.1:{port}", None, 0.5, data_dir=tmp_path))


def test_cdf_gives_every_model_its_own_colour_and_labels_each_slo(tmp_path, monkeypatch):
    """Beyond ten models the colours must not repeat, and every SLO line says whose it is."""
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from parvagpu.serving.stats import plot_cdf

    shown = {}
    monkeypatch.setattr(plt, "close", lambda fig=None: shown.setdefault("fig", fig))
    models = {f"m{i:02d}": [1.0 + i, 2.0 + i] for i in range(14)}
    plot_cdf(models, {m: 10.0 + i for i, m in enumerate(models)}, tmp_path / "cdf.png", "t")
    ax = shown["fig"].axes[0]
    colours = {tuple(line.get_color()) if not isinstance(line.get_color(), str) else line.get_color()
               for line in ax.get_lines() if line.get_label() in models}
    assert len(colours) == 14
    assert {t.get_text().split()[0] for t in ax.texts} == set(models)
