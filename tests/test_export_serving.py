"""`export k8s` against `serve`: the manifests name the segments `serve` builds from the same plan,
with the same models, batch sizes and process counts, and a pod's exact command line (its script,
its `parvagpu serve ... --segment` arguments, its environment, the ConfigMap's files) run as a local
process on this CPU answers Open Inference Protocol requests like a direct call of the model."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from parvagpu.cli import app
from parvagpu.contract.plan_json import plan_to_json
from parvagpu.core.gpus import gpu_type
from parvagpu.core.model import DeploymentMap, PlacedSegment, Segment, Service, Triplet
from parvagpu.export.k8s import CONFIG_DIR
from parvagpu.serving.policy import serving_spec
from ray_cluster import ray_tests

SRC = Path(__file__).resolve().parents[1] / "src"

# Two models on one GPU; "mlp" has two segments (batch 4 with 2 processes, batch 2 with 1).
PLAN = DeploymentMap(
    "A100-80GB", "parva", 3, 8,
    (
        PlacedSegment(Segment("mlp", Triplet(1, 4, 2, 400.0, 10.0)), 0, 0),
        PlacedSegment(Segment("mlp", Triplet(1, 2, 1, 200.0, 10.0)), 0, 1),
        PlacedSegment(Segment("sleepy", Triplet(1, 2, 1, 100.0, 20.0)), 0, 2),
    ),
    (Service("mlp", 20.0, 1000.0), Service("sleepy", 10.0, 1000.0)),
)
MODELS = """\
version: v1
models:
  mlp:
    factory: parvagpu.serving.workers:numpy_mlp
    inputs: [{name: x, datatype: FP32, shape: [3, 8, 8]}]
    outputs: [{name: logits, datatype: FP32, shape: [10]}]
  sleepy:
    factory: parvagpu.serving.workers:sleep_model
    inputs: [{name: x, datatype: FP32, shape: [4]}]
    outputs: [{name: sum, datatype: FP32, shape: [1]}]
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(plan file, models file, the export's documents by file name), written by the CLI."""
    tmp = tmp_path_factory.mktemp("export")
    plan, models = tmp / "plan.json", tmp / "models.yaml"
    plan.write_text(plan_to_json(PLAN))
    models.write_text(MODELS)
    r = CliRunner().invoke(app, ["export", "k8s", str(plan), "--models", str(models), "--out", str(tmp / "k8s")])
    assert r.exit_code == 0, r.output
    docs = {p.name: yaml.safe_load(p.read_text()) for p in (tmp / "k8s").glob("*.yaml")}
    return plan, models, docs


def _container(doc: dict) -> dict:
    (c,) = doc["spec"]["template"]["spec"]["containers"]
    return c


def _option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def _config_files(docs: dict, into: Path) -> Path:
    """The ConfigMap's files, as the pod sees them under CONFIG_DIR."""
    into.mkdir(exist_ok=True)
    for name, text in docs["configmap.yaml"]["data"].items():
        (into / name).write_text(text)
    return into


def test_manifests_and_serve_agree_on_models_batches_and_processes(exported, tmp_path):
    """Each Deployment's own `serve --segment` command, parsed by `serve`'s code from the ConfigMap's
    files, serves exactly one segment of `serve`'s full spec, with the batch and processes the
    manifest declares and the MIG profile it requests; together they cover every segment once, and
    each model has a Service selecting its pods."""
    from parvagpu.cli.serving import _serving_inputs

    _, _, docs = exported
    config = _config_files(docs, tmp_path / "config")
    full = {s.name: s for ms in serving_spec(PLAN).values() for s in ms.segments}
    seen = []
    for doc in (d for d in docs.values() if d["kind"] == "Deployment"):
        args = _container(doc)["args"]
        assert args[:2] == ["parvagpu", "serve"]
        local = [a.replace(CONFIG_DIR, str(config)) for a in args]
        spec, models, _ = _serving_inputs(Path(local[2]), Path(_option(local, "--models")), None, None, None,
                                          segments=[_option(args, "--segment")])
        ((model, ms),) = spec.items()
        (seg,) = ms.segments
        notes, labels = doc["metadata"]["annotations"], doc["spec"]["template"]["metadata"]["labels"]
        assert (seg.name, seg.batch, seg.procs) == (notes["parvagpu.io/serving-segment"],
                                                   int(notes["parvagpu.io/batch"]), int(notes["parvagpu.io/procs"]))
        want = full[seg.name]
        assert replace(seg, rate=0.0) == replace(want, rate=0.0) and seg.rate == pytest.approx(want.rate)
        assert labels["parvagpu.io/model"] == model and set(models) >= {model}
        (resource,) = _container(doc)["resources"]["limits"]
        assert resource == f"nvidia.com/mig-{gpu_type(PLAN.gpu_type).profile(seg.size).name}"
        services = [d for d in docs.values() if d["kind"] == "Service"
                    and d["spec"]["selector"].items() <= labels.items()]
        assert [s["metadata"]["annotations"]["parvagpu.io/model-name"] for s in services] == [model]
        seen.append(seg.name)
    assert sorted(seen) == sorted(full)


def test_an_unknown_segment_is_a_one_line_error(exported):
    plan, models, _ = exported
    r = CliRunner().invoke(app, ["serve", str(plan), "--models", str(models), "--segment", "mlp-n0-g7-s0"])
    assert r.exit_code == 2 and "no segment 'mlp-n0-g7-s0' in the plan" in r.stderr, r.output


def test_the_dockerfile_installs_the_command_the_pods_run(exported):
    """The image's entry point is the package's console script, with the extras serving needs."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    root = SRC.parent
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    text = (root / "docker" / "Dockerfile").read_text()
    extras = text.split('"/build[', 1)[1].split("]", 1)[0].split(",")
    assert set(extras) <= set(project["optional-dependencies"]) and {"serve", "models"} <= set(extras)
    assert 'ENTRYPOINT ["parvagpu"]' in text and "parvagpu" in project["scripts"]
    _, _, docs = exported
    assert {_container(d)["args"][0] for d in docs.values() if d["kind"] == "Deployment"} == {"parvagpu"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def _infer(url: str, doc: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, json.dumps(doc).encode(), {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        out += map(int, kids)
        todo += map(int, kids)
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except OSError:
        return ""


@pytest.mark.slow
@ray_tests
def test_the_pod_command_serves_its_segment_over_oip(exported, tmp_path):
    """The container's command and arguments as the manifest has them, with only the ConfigMap's
    mount directory, the bind address (loopback here) and the port replaced; `parvagpu` on PATH is
    this checkout's CLI, as the image's entry point is the installed one."""
    pytest.importorskip("ray.serve")
    from parvagpu.serving.workers import build_runner, parse_models

    _, _, docs = exported
    doc = next(d for d in docs.values() if d["kind"] == "Deployment"
               and d["metadata"]["annotations"]["parvagpu.io/serving-segment"] == "mlp-n0-g0-s0")
    c = _container(doc)
    config, port = _config_files(docs, tmp_path / "config"), _free_port()
    args = [a.replace(CONFIG_DIR, str(config)) for a in c["args"]]
    args[args.index("--host") + 1], args[args.index("--port") + 1] = "127.0.0.1", str(port)
    shim = tmp_path / "bin" / "parvagpu"
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\nPYTHONPATH="{SRC}" exec "{sys.executable}" -m parvagpu "$@"\n')
    shim.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ENABLE") and k != "NVIDIA_VISIBLE_DEVICES"}
    env.update({e["name"]: e["value"] for e in c["env"]})
    env["PATH"] = f"{shim.parent}:{env['PATH']}"
    proc = subprocess.Popen([*c["command"], *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while _get(f"{base}/v2/health/ready") != 200:  # the manifest's readiness probe
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "the pod never became ready"
            time.sleep(0.5)
        x = np.random.default_rng(3).standard_normal((3, 3, 8, 8)).astype(np.float32)
        status, out = _infer(f"{base}/v2/models/mlp/infer", {"id": "r1", "inputs": [
            {"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]})
        assert status == 200, out
        (logits,) = out["outputs"]
        assert out["id"] == "r1" and out["parameters"]["segment"] == "mlp-n0-g0-s0"
        assert logits["name"] == "logits" and logits["shape"] == [3, 10]
        direct = build_runner(parse_models(yaml.safe_load(MODELS))["mlp"], 4).model(x)
        np.testing.assert_allclose(np.array(logits["data"]).reshape(3, 10), direct, rtol=1e-5, atol=1e-5)
        # 5 items exceed the segment's batch of 4; the other model is in another pod
        big = np.zeros((5, 3, 8, 8), np.float32)
        assert _infer(f"{base}/v2/models/mlp/infer", {"inputs": [
            {"name": "x", "datatype": "FP32", "shape": list(big.shape), "data": big.ravel().tolist()}]})[0] == 400
        assert _get(f"{base}/v2/models/sleepy") == 404
        replicas = [p for p in _descendants(proc.pid) if "ServeReplica:parvagpu:mlp-n0-g0-s0" in _cmdline(p)]
        assert len(replicas) == 2  # one process per planned MPS process
    finally:
        proc.send_signal(signal.SIGTERM)  # what the kubelet sends the container on stop
        try:
            rc = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = None
    assert rc == 0
