"""The Open Inference Protocol without Ray: tensor codec (against tritonclient's own encoder and
decoder), signature checks, batches sliced per caller, and the ingress's HTTP answers."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from fake_handles import Resp

from parvagpu.core.errors import ParvaError
from parvagpu.serving.ingress import Ingress
from parvagpu.serving.oip import (
    InferRequest, OipError, Signature, TensorSpec, decode_request, decode_response, encode_request, encode_response,
)
from parvagpu.serving.workers import Item, build_runner, finish, merge, parse_models, run_batch, split

tc = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is in the test extra")
from tritonclient.http._utils import _get_inference_request  # noqa: E402

RNG = np.random.default_rng(0)
TENSORS = {
    "FP32": RNG.standard_normal((2, 3)).astype(np.float32),
    "FP16": RNG.standard_normal((2, 2)).astype(np.float16),
    "FP64": RNG.standard_normal((1, 4)),
    "INT64": RNG.integers(-5, 5, (3, 2)),
    "INT8": RNG.integers(-5, 5, (2, 2)).astype(np.int8),
    "UINT8": RNG.integers(0, 255, (2, 5)).astype(np.uint8),
    "BOOL": RNG.integers(0, 2, (2, 2)).astype(bool),
    "BYTES": np.array([[b"cat"], [b""], [b"\xc3\xa9t\xc3\xa9"]], dtype=object),
}


def _triton_body(inputs: dict, binary: bool, outputs=None, rid="r7"):
    ins = []
    for name, arr in inputs.items():
        dt = "BYTES" if arr.dtype == object else tc.np_to_triton_dtype(arr.dtype)
        t = tc.InferInput(name, list(arr.shape), dt)
        t.set_data_from_numpy(arr, binary_data=binary)
        ins.append(t)
    outs = [tc.InferRequestedOutput(n, binary_data=binary) for n in outputs] if outputs else None
    body, n = _get_inference_request(ins, rid, outs, 0, False, False, 0, None, None)
    return (body if isinstance(body, bytes) else body.encode()), (None if n is None else str(n))


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("datatype", sorted(TENSORS))
def test_codec_reads_and_writes_what_tritonclient_does(datatype, binary):
    x = TENSORS[datatype]
    body, n = _triton_body({"x": x}, binary, outputs=["y"])
    req = decode_request(body, n)
    assert req.id == "r7" and req.outputs == ("y",) and req.binary == (frozenset({"y"}) if binary else frozenset())
    assert req.inputs["x"].shape == x.shape and req.inputs["x"].tolist() == x.tolist()
    out, hn = encode_response("m", req, {"y": x}, ("y",), {"batch": 3})
    res = tc.InferResult.from_response_body(out, header_length=hn)
    assert res.get_response()["id"] == "r7" and res.get_response()["parameters"] == {"batch": 3}
    got = res.as_numpy("y")
    want = x.tolist()
    if datatype == "BYTES" and not binary:  # tritonclient gives JSON BYTES back as str
        want = [[v.decode() for v in row] for row in want]
    assert got.shape == x.shape and got.tolist() == want


def test_request_without_outputs_gets_binary_outputs_as_tritonclient_asks():
    body, n = _triton_body({"x": TENSORS["FP32"]}, binary=False)
    req = decode_request(body, n)
    assert req.binary_all and req.outputs is None
    out, hn = encode_response("m", req, {"y": TENSORS["FP32"]}, ("y",))
    assert hn is not None and decode_response(out, str(hn))["y"].tolist() == TENSORS["FP32"].tolist()


def test_own_request_encoder_round_trips():
    x = {"a": TENSORS["FP32"], "b": TENSORS["INT64"][:2]}
    for binary in (True, False):
        body, n = encode_request(x, binary, rid="q")
        req = decode_request(body, None if n is None else str(n))
        assert {k: v.tolist() for k, v in req.inputs.items()} == {k: v.tolist() for k, v in x.items()}


def _json_body(**kw) -> bytes:
    doc = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1.0, 2.0]}]}
    doc["inputs"][0].update(kw)
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    "body, header, msg",
    [
        (b"{not json", None, "not valid JSON"),
        (b"[1, 2]", None, "JSON object"),
        (b'{"inputs": []}', None, "non-empty"),
        (_json_body(datatype="FP8"), None, "unknown datatype"),
        (_json_body(shape=[2, 2]), None, "2 values for shape"),
        (_json_body(shape=[1, -2]), None, "non-negative"),
        (_json_body(data=[[1.0], [2.0, 3.0]]), None, "ragged"),
        (_json_body(data=["a", "b"]), None, "not FP32"),
        (_json_body(datatype="INT64", data=[1.5, 2.0]), None, "not INT64"),
        (_json_body(datatype="UINT8", data=[1, 300]), None, "out of range"),
        (_json_body(datatype="BYTES", data=["a", None]), None, "must be strings"),
        (_json_body(data=None, parameters={"binary_data_size": 8}), None, "does not fit"),
        (_json_body() + b"xx", str(len(_json_body())), "beyond the inputs"),
        (_json_body(), "12345", "outside the body"),
        (_json_body(), "ten", "not an integer"),
    ],
)
def test_malformed_requests_are_400_with_a_reason(body, header, msg):
    with pytest.raises(OipError, match=msg) as e:
        decode_request(body, header)
    assert e.value.status == 400


def test_binary_tensor_of_the_wrong_size_is_refused():
    head = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3],
                                   "parameters": {"binary_data_size": 8}}]}).encode()
    with pytest.raises(OipError, match="8 bytes for shape"):
        decode_request(head + b"\0" * 8, str(len(head)))


SIG = Signature(
    (TensorSpec("ids", "INT64", (-1,)), TensorSpec("mask", "INT64", (-1,))),
    (TensorSpec("y", "FP32", (4,)),),
)


def test_signature_counts_items_and_accepts_variable_dimensions():
    ids = np.ones((3, 7), dtype=np.int64)
    assert SIG.check({"ids": ids, "mask": ids}) == 3
    assert SIG.metadata("m")["inputs"][0] == {"name": "ids", "datatype": "INT64", "shape": [-1, -1]}
    assert SIG.check_outputs(None) == ("y",) and SIG.check_outputs(("y",)) == ("y",)


@pytest.mark.parametrize(
    "tensors, msg",
    [
        ({"ids": np.ones((2, 3), dtype=np.int64)}, "missing"),
        ({"ids": np.ones((2, 3), np.int64), "mask": np.ones((2, 3), np.int64), "z": np.ones(1)}, "unexpected"),
        ({"ids": np.ones((2, 3), np.int32), "mask": np.ones((2, 3), np.int64)}, "datatype INT32"),
        ({"ids": np.ones((2, 3, 1), np.int64), "mask": np.ones((2, 3), np.int64)}, "shape"),
        ({"ids": np.ones((2, 3), np.int64), "mask": np.ones((3, 3), np.int64)}, "same number"),
        ({"ids": np.ones((0, 3), np.int64), "mask": np.ones((0, 3), np.int64)}, "same number"),
    ],
)
def test_signature_refuses_mismatches(tensors, msg):
    with pytest.raises(OipError, match=msg):
        SIG.check(tensors)
    with pytest.raises(OipError, match="unknown outputs"):
        SIG.check_outputs(("logits",))


# Batches: each caller gets exactly its own rows of the stacked batch's output.

CFG = {
    "mlp": {"factory": "parvagpu.serving.workers:numpy_mlp", "args": {"hidden": 16, "classes": 4},
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [6]}],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [4]}]},
}


@pytest.fixture(scope="module")
def runner():
    return build_runner(parse_models(CFG)["mlp"], 8)


def test_a_batch_of_mixed_requests_answers_each_with_its_own_rows(runner):
    xs = [RNG.standard_normal((n, 6)).astype(np.float32) for n in (1, 3, 2)]
    odd = RNG.standard_normal((2, 6))  # another item dtype (float64): its own model call
    parts = [split({"x": x}, len(x)) for x in xs] + [split({"x": odd}, 2)]
    items = [Item(0.0, p) for ps in parts for p in ps] + [Item(0.0, None)]
    assert len(items) == 9  # a request of n items counts n against the batch size
    res = run_batch(runner, items)
    assert all(r["batch"] == 9 for r in res)
    answers, start = [], 0
    for ps in parts:
        answers.append(merge(res[start:start + len(ps)]))
        start += len(ps)
    direct = runner.model(np.concatenate(xs))
    start = 0
    for x, a in zip(xs, answers):
        y = finish(runner, a["outputs"])["y"]
        np.testing.assert_allclose(y, direct[start:start + len(x)], rtol=1e-5)
        np.testing.assert_allclose(y, runner.model(x), rtol=1e-5)  # the same as alone
        start += len(x)
    np.testing.assert_allclose(answers[3]["outputs"]["y"], runner.model(odd), rtol=1e-5)
    assert "outputs" not in res[-1] and res[-1]["compute_ms"] > 0  # synthetic: timings only


def test_a_failing_model_call_answers_its_items_with_an_error(runner):
    bad = Item(0.0, {"x": np.ones((1, 6), dtype=np.float32), "z": np.ones((1, 2))})  # unexpected kwarg
    ok = Item(0.0, {"x": np.ones((1, 6), dtype=np.float32)})
    res = run_batch(runner, [bad, ok])
    assert "error" in res[0] and "outputs" in res[1]
    assert "error" in merge([res[1], res[0]])


def test_declared_outputs_are_checked_after_the_post_hook(runner):
    with pytest.raises(OipError, match="declared FP32"):
        finish(runner, {"y": np.ones((1, 4), dtype=np.float64)})
    with pytest.raises(OipError, match="missing"):
        finish(runner, {})


@pytest.mark.parametrize(
    "entry, msg",
    [
        ({"factory": "a.b:c"}, "inputs"),
        ({"factory": "a.b:c", "inputs": [{"name": "x", "datatype": "FP8", "shape": [1]}]}, "datatype"),
        ({"factory": "a.b:c", "inputs": [{"name": "x", "shape": [0]}]}, "shape"),
        ({"factory": "a.b:c", "inputs": [{"name": "x"}, {"name": "x"}]}, "repeat"),
        ({"factory": "a.b:c", "inputs": [{"name": "x"}], "pre": "a.b:d"}, "pre hook"),
        ({"factory": "a.b:c", "shape": [1], "post": {"hook": "nocolon"}}, "post"),
        ({"factory": "a.b:c", "shape": [1], "weights": "/nonexistent/w.pt"}, "not found"),
    ],
)
def test_models_config_rejects_bad_signatures(entry, msg):
    with pytest.raises(ParvaError, match=msg):
        parse_models({"m": entry})


# The ingress's HTTP answers, with fake segment handles that count what reaches them.


class _Segment:
    """A fake segment handle: synthetic calls and `predict` run the numpy model at once."""

    def __init__(self, runner, hold: asyncio.Event | None = None) -> None:
        self.runner, self.hold, self.calls = runner, hold, 0
        self.predict = self

    def remote(self, inputs=None, n=1):
        self.calls += 1

        async def go():
            if self.hold is not None:
                await self.hold.wait()
            if not isinstance(inputs, dict):
                return run_batch(self.runner, [Item(0.0, None)])[0]
            res = merge(run_batch(self.runner, [Item(0.0, x) for x in split(inputs, n)]))
            res["outputs"] = finish(self.runner, res["outputs"])
            return res

        return Resp(go())


def _ingress(runner, hold=None, batch=4, limit=4):
    seg = {"name": "mlp-s0", "throughput": 10.0, "limit": limit, "batch": batch, "procs": 1, "wait_s": 0.0,
           "latency_ms": 10.0}
    spec = {"mlp": {"rate": 1.0, "latency_ms": 100.0, "capacity": 10.0, "segments": [seg]}}
    handle = _Segment(runner, hold)
    return Ingress(spec, {"mlp-s0": handle}, {"mlp": parse_models(CFG)["mlp"].signature}, max_body=4096), handle


def _http(ing, method, path, body=b"", headers=None):
    return asyncio.run(ing.http(method, path, headers or {}, body))


def test_http_infer_json_and_binary_match_a_direct_call(runner):
    ing, handle = _ingress(runner)
    x = RNG.standard_normal((2, 6)).astype(np.float32)
    for binary in (False, True):
        body, n = _triton_body({"x": x}, binary, outputs=["y"])
        r = _http(ing, "POST", "/v2/models/mlp/versions/1/infer", body,
                  {} if n is None else {"inference-header-content-length": n})
        assert r.status == 200, r.body
        res = tc.InferResult.from_response_body(r.body, header_length=r.headers.get("inference-header-content-length")
                                                and int(r.headers["inference-header-content-length"]))
        np.testing.assert_allclose(res.as_numpy("y"), runner.model(x), rtol=1e-5)
        assert res.get_response()["parameters"]["segment"] == "mlp-s0"
    assert handle.calls == 2


def test_http_metadata_health_and_v1(runner):
    ing, _ = _ingress(runner)
    meta = json.loads(_http(ing, "GET", "/v2/models/mlp").body)
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 6]}]
    assert meta["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}]
    assert _http(ing, "GET", "/v2/health/live").status == 200 and _http(ing, "GET", "/v2/health/ready").status == 200
    assert json.loads(_http(ing, "GET", "/v2/models/mlp/ready").body)["ready"] is True
    assert json.loads(_http(ing, "GET", "/v2").body)["extensions"] == ["binary_tensor_data"]
    r = _http(ing, "POST", "/v1/models/mlp/infer")
    assert r.status == 200 and json.loads(r.body)["timing"]["batch"] == 1


def test_not_ready_until_the_segments_are_up_then_ready_for_good(runner):
    """A planned application's ingress answers before its segments' replicas have loaded their
    models: readiness (a Kubernetes probe, tritonclient's is_server_ready) says 503 until they have."""
    ing, _ = _ingress(runner)
    answers = [False, False, True]

    async def readiness() -> bool:
        return answers.pop(0)

    ing.readiness = readiness
    assert _http(ing, "GET", "/v2/health/ready").status == 503
    r = _http(ing, "GET", "/v2/models/mlp/ready")
    assert r.status == 503 and r.headers["retry-after"] and json.loads(r.body)["ready"] is False
    assert _http(ing, "GET", "/v2/health/live").status == 200  # alive all along
    assert [_http(ing, "GET", "/v2/health/ready").status for _ in range(3)] == [200] * 3 and answers == []


@pytest.mark.parametrize(
    "path, body, status, msg",
    [
        ("/v2/models/nope/infer", _json_body(name="x"), 404, "unknown model"),
        ("/v2/models/nope", b"", 404, "unknown model"),
        ("/v2/models/mlp/versions/2/infer", _json_body(name="x"), 404, "version"),
        ("/v2/models/mlp/infer", b"{", 400, "not valid JSON"),
        ("/v2/models/mlp/infer", _json_body(name="x", datatype="FP64"), 400, "datatype FP64"),
        ("/v2/models/mlp/infer", _json_body(name="x", shape=[2]), 400, "shape"),
        ("/v2/models/mlp/infer", _json_body(name="w"), 400, "missing"),
        ("/v2/models/mlp/infer", _json_body(name="x", shape=[1, 5000], data=[0.0] * 5000), 413, "exceeds"),
        ("/v2/models/mlp/infer", _json_body(name="x", shape=[5, 6], data=[0.0] * 30), 400, "largest batch"),
    ],
)
def test_bad_requests_get_the_protocol_error_and_never_reach_a_model(runner, path, body, status, msg):
    ing, handle = _ingress(runner)
    r = _http(ing, "POST" if path.endswith("infer") else "GET", path, body)
    assert r.status == status and msg in json.loads(r.body)["error"]
    assert handle.calls == 0 and ing.stats_doc()["mlp"]["admitted"] == 0


def test_over_capacity_is_503_with_retry_after_and_items_count_against_the_limit(runner):
    async def run():
        hold = asyncio.Event()
        ing, handle = _ingress(runner, hold, batch=4, limit=4)
        three = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [3, 6], "data": [1] * 18}]})
        two = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 6], "data": [1] * 12}]})
        first = asyncio.ensure_future(ing.http("POST", "/v2/models/mlp/infer", {}, three.encode()))
        await asyncio.sleep(0.01)
        assert ing.stats_doc()["mlp"]["inflight"] == [3]  # three items hold three slots
        second = await ing.http("POST", "/v2/models/mlp/infer", {}, two.encode())
        hold.set()
        return await first, second, ing, handle

    first, second, ing, handle = asyncio.run(run())
    assert first.status == 200 and decode_response(first.body, None)["y"].shape == (3, 4)
    assert second.status == 503 and second.headers["retry-after"] == "1"
    st = ing.stats_doc()["mlp"]
    assert (st["admitted"], st["rejected"], st["ok"], st["inflight"], handle.calls) == (1, 1, 1, [0], 1)


def test_own_request_type_checks_like_http(runner):
    ing, _ = _ingress(runner)
    with pytest.raises(OipError, match="datatype"):
        asyncio.run(ing.infer_tensors("mlp", InferRequest({"x": np.ones((1, 2), dtype=np.int32)})))


def test_hooks_image_bytes_in_top_k_out(tmp_path):
    pil = pytest.importorskip("PIL.Image")
    import io

    cfg = {"m": {"factory": "parvagpu.serving.workers:numpy_mlp", "args": {"classes": 7}, "shape": [3, 8, 8],
                 "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1]}],
                 "outputs": [{"name": "classes", "datatype": "INT64", "shape": [3]},
                             {"name": "scores", "datatype": "FP32", "shape": [3]}],
                 "pre": {"hook": "parvagpu.serving.hooks:image_bytes", "args": {"size": 8}},
                 "post": {"hook": "parvagpu.serving.hooks:top_k", "args": {"k": 3}}}}
    runner = build_runner(parse_models(cfg)["m"], 4)
    pngs = []
    for color in ((255, 0, 0), (0, 90, 200)):
        buf = io.BytesIO()
        pil.new("RGB", (20, 12), color).save(buf, format="PNG")
        pngs.append(buf.getvalue())
    images = np.empty((2, 1), dtype=object)
    images[:, 0] = pngs
    from parvagpu.serving.hooks import image_bytes, top_k
    from parvagpu.serving.workers import prepare

    x = prepare(runner, {"image": images}, 2)
    assert x["input"].shape == (2, 3, 8, 8) and x["input"].dtype == np.float32
    res = merge(run_batch(runner, [Item(0.0, p) for p in split(x, 2)]))
    out = finish(runner, res["outputs"])
    want = top_k({"output": runner.model(image_bytes({"image": images}, size=8)["input"])}, k=3)
    assert out["classes"].tolist() == want["classes"].tolist()
    np.testing.assert_allclose(out["scores"], want["scores"], rtol=1e-5)
    assert np.all(np.diff(out["scores"], axis=1) <= 0)  # best first


def test_reduced_spec_keeps_the_fastest_segments_and_scales_limits():
    from parvagpu.core.model import DeploymentMap, PlacedSegment, Segment, Service, Triplet
    from parvagpu.serving.policy import reduce_spec, serving_spec

    plan = DeploymentMap("A100-80GB", "parva", 3, 8, (
        PlacedSegment(Segment("a", Triplet(1, 4, 3, 30.0, 20.0)), 0, 0),
        PlacedSegment(Segment("a", Triplet(2, 4, 2, 50.0, 20.0)), 0, 2),
    ), (Service("a", 60.0, 200.0),))
    spec = serving_spec(plan, 0.5)
    small = reduce_spec(spec, max_segments=1, max_replicas=1)["a"]
    (seg,) = small.segments
    full = spec["a"].segments[1]
    assert seg.name == full.name and seg.procs == 1 and seg.batch == 4
    assert seg.throughput == pytest.approx(25.0) and seg.limit == full.limit // 2 and seg.rate == pytest.approx(30.0)
    assert reduce_spec(spec) == spec
    with pytest.raises(ParvaError, match="max replicas"):
        reduce_spec(spec, max_replicas=0)


@pytest.mark.parametrize("name, millions, side", [("resnet50", 25.557, 224), ("densenet121", 7.979, 224),
                                                  ("mobilenet_v2", 3.505, 224), ("inception_v3", 23.835, 299)])
def test_example_models_have_the_published_size_and_run(name, millions, side):
    torch = pytest.importorskip("torch")
    from parvagpu.serving import zoo

    model = getattr(zoo, name)(impl="builtin").eval()  # torchvision's: tests/test_zoo.py
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(millions, abs=0.001)
    if name in ("mobilenet_v2", "inception_v3"):
        with torch.inference_mode():
            assert model(torch.zeros(1, 3, side, side)).shape == (1, 1000)


def test_example_models_config_covers_the_example():
    from parvagpu.cli.common import example_dir
    from parvagpu.inputs.profiles import load_profiles
    from parvagpu.serving.workers import read_models

    models = read_models(example_dir() / "models.yaml")
    assert set(models) == set(load_profiles(example_dir() / "profiles"))
    assert models["inceptionv3"].inputs[0].shape == (3, 299, 299)


class _Req:
    """What `_read_body` reads of a Starlette request: headers and the body's chunks."""

    def __init__(self, chunks: list[bytes], length: str | None) -> None:
        self.headers = {} if length is None else {"content-length": length}
        self.chunks, self.read = chunks, 0

    async def stream(self):
        for c in self.chunks:
            self.read += 1
            yield c


def test_oversized_bodies_are_refused_before_or_while_reading():
    from parvagpu.serving.app import _read_body

    big = _Req([b"x" * 10] * 5, "50")
    assert asyncio.run(_read_body(big, 40)) is None and big.read == 0  # Content-Length says so: nothing read
    chunked = _Req([b"x" * 10] * 5, None)
    assert asyncio.run(_read_body(chunked, 25)) is None and chunked.read == 3  # stops at the limit
    assert asyncio.run(_read_body(_Req([b"ab", b"c"], "3"), 3)) == b"abc"


def test_weights_from_a_local_state_dict_are_loaded(tmp_path):
    torch = pytest.importorskip("torch")
    from parvagpu.profiler.zoo import tiny_cnn

    trained = tiny_cnn()
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.5)  # anything but the factory's own seeded weights
    torch.save(trained.state_dict(), tmp_path / "w.pt")
    (tmp_path / "models.yaml").write_text(
        "models:\n  c:\n    factory: parvagpu.profiler.zoo:tiny_cnn\n    weights: w.pt\n"
        "    inputs: [{name: x, datatype: FP32, shape: [3, 32, 32]}]\n"
        "    outputs: [{name: y, datatype: FP32, shape: [10]}]\n")
    from parvagpu.serving.workers import read_models

    runner = build_runner(read_models(tmp_path / "models.yaml")["c"], 2)
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    out, _ = runner.predict({"x": x})
    with torch.inference_mode():
        want = trained.eval()(torch.from_numpy(x)).numpy()
        seeded = tiny_cnn().eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out["y"], want, rtol=1e-4, atol=1e-5)
    assert not np.allclose(out["y"], seeded)
