"""Cluster exports: Kubernetes manifests validated against the Kubernetes schemas, mig-parted
configs checked as strictly as mig-parted parses them, and the pod's MPS start-up script run.
(tests/test_export_serving.py: the manifests against `serve`, and a pod's command run.)"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections import Counter

import pytest
import yaml
from apply_support import scenario_plan

from parvagpu.export.common import write_files
from parvagpu.cli.common import example_dir
from parvagpu.export.k8s import CONFIG_DIR, DEFAULT_NODE_LABEL, POD_SCRIPT, k8s_deployments, k8s_files, k8s_manifests
from parvagpu.export.mig_parted import MIG_CONFIG_LABEL, check_mig_parted, config_name, mig_parted_config, mig_parted_files
from parvagpu.core.gpus import gpu_type
from parvagpu.core.errors import ParvaError

kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed (test extra)")

K8S_VERSIONS = ("1.28", kv.latest_version())
DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


MODELS_TEXT = (example_dir() / "models.yaml").read_text()


@pytest.fixture(scope="module", params=[6, 1])
def plan(request):
    return scenario_plan(request.param)


# -- Kubernetes ----------------------------------------------------------------------------------


def test_every_manifest_passes_strict_schema_validation(plan):
    files = k8s_files(plan, MODELS_TEXT, namespace="serving")
    docs = [yaml.safe_load(t) for n, t in files.items() if n.endswith(".yaml")]
    kinds = Counter(d["kind"] for d in docs)
    assert kinds == {"Deployment": len(plan.segments), "Service": len({s.model for s in plan.segments}),
                     "ConfigMap": 1}
    for doc in docs:
        assert doc["metadata"]["namespace"] == "serving"
        for v in K8S_VERSIONS:
            kv.validate(doc, v, strict=True)


def test_the_validator_catches_a_broken_manifest(plan):
    doc = next(iter(k8s_deployments(plan).values()))
    doc["spec"]["replicas"] = "one"
    with pytest.raises(kv.ValidationError):
        kv.validate(doc, K8S_VERSIONS[-1], strict=True)
    doc = next(iter(k8s_deployments(plan).values()))
    doc["spec"]["template"]["spec"]["containers"][0]["resourcez"] = {}
    with pytest.raises(kv.ValidationError):
        kv.validate(doc, K8S_VERSIONS[-1], strict=True)


def test_each_segment_requests_its_mig_profile_on_its_node(plan):
    gpu = gpu_type(plan.gpu_type)
    docs = k8s_deployments(plan, node_label="example.com/parva-node")
    got = Counter()
    for doc in docs.values():
        spec = doc["spec"]["template"]["spec"]
        (c,) = spec["containers"]
        (res,) = c["resources"]["limits"].items()
        assert res[1] == 1 and res[0].startswith("nvidia.com/mig-")
        env = {e["name"]: e["value"] for e in c["env"]}
        meta, notes = doc["metadata"]["labels"], doc["metadata"]["annotations"]
        assert spec["nodeSelector"] == {"example.com/parva-node": meta["parvagpu.io/node"]}
        assert doc["spec"]["replicas"] == 1 and doc["spec"]["strategy"] == {"type": "Recreate"}
        assert doc["spec"]["selector"]["matchLabels"].items() <= doc["spec"]["template"]["metadata"]["labels"].items()
        assert DNS1123.match(doc["metadata"]["name"]) and len(doc["metadata"]["name"]) <= 63
        assert c["command"][:2] == ["/bin/sh", "-c"] and "nvidia-cuda-mps-control -d" in c["command"][2]
        assert env["CUDA_MPS_PIPE_DIRECTORY"] and "CUDA_VISIBLE_DEVICES" not in env  # the device plugin sets it
        got[(int(meta["parvagpu.io/node"]), int(meta["parvagpu.io/gpu"]), int(meta["parvagpu.io/start"]),
             res[0].removeprefix("nvidia.com/mig-"), c["args"][c["args"].index("--segment") + 1].rsplit("-n", 1)[0],
             int(notes["parvagpu.io/batch"]), int(notes["parvagpu.io/procs"]))] += 1
    want = Counter(
        (plan.node_of(s.gpu), plan.local_gpu(s.gpu), s.start, gpu.profile(s.size).name, s.model,
         s.segment.triplet.batch, s.segment.triplet.procs)
        for s in plan.segments
    )
    assert got == want
    assert len(docs) == len(set(docs))


def test_image_port_and_namespace_are_configurable_and_the_pod_serves_its_segment(plan):
    docs = k8s_deployments(plan, image="registry.local/parva:1", namespace="ml", port=9000)
    doc = next(iter(docs.values()))
    pod = doc["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == "registry.local/parva:1" and doc["metadata"]["namespace"] == "ml"
    assert c["command"] == ["/bin/sh", "-c", POD_SCRIPT, "parvagpu-segment"]
    seg = doc["metadata"]["annotations"]["parvagpu.io/serving-segment"]
    assert c["args"] == ["parvagpu", "serve", f"{CONFIG_DIR}/plan.json", "--models", f"{CONFIG_DIR}/models.yaml",
                         "--segment", seg, "--host", "0.0.0.0", "--port", "9000"]
    assert c["ports"] == [{"name": "http", "containerPort": 9000, "protocol": "TCP"}]
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True} in c["volumeMounts"]
    assert {"name": "config", "configMap": {"name": "parvagpu-plan"}} in pod["volumes"]
    forced = next(iter(k8s_deployments(plan, force_invalid=True).values()))
    assert forced["spec"]["template"]["spec"]["containers"][0]["args"][-1] == "--force-invalid"


def test_the_config_map_holds_the_plan_and_the_models_config(plan):
    from parvagpu.contract.plan_json import plan_from_dict

    cm = k8s_manifests(plan, MODELS_TEXT)["configmap.yaml"]
    assert cm["data"]["models.yaml"] == MODELS_TEXT
    import json

    assert plan_from_dict(json.loads(cm["data"]["plan.json"]))[0] == plan


def test_one_service_per_model_selects_its_segment_pods(plan):
    docs = k8s_manifests(plan, MODELS_TEXT, port=8123)
    pods = [d for d in docs.values() if d["kind"] == "Deployment"]
    services = [d for d in docs.values() if d["kind"] == "Service"]
    assert sorted(s["metadata"]["annotations"]["parvagpu.io/model-name"] for s in services) == sorted(
        {s.model for s in plan.segments})
    for svc in services:
        model = svc["metadata"]["annotations"]["parvagpu.io/model-name"]
        sel = svc["spec"]["selector"]
        chosen = [p for p in pods if sel.items() <= p["spec"]["template"]["metadata"]["labels"].items()]
        assert len(chosen) == sum(1 for s in plan.segments if s.model == model)
        assert svc["spec"]["ports"] == [{"name": "http", "port": 8123, "targetPort": "http", "protocol": "TCP"}]


def test_models_whose_names_collide_in_kubernetes_are_an_error():
    from parvagpu.core.model import DeploymentMap, PlacedSegment, Segment, Service, Triplet

    plan = DeploymentMap("A100-80GB", "parva", 2, 8, (
        PlacedSegment(Segment("Net_A", Triplet(1, 1, 1, 10.0, 10.0)), 0, 0),
        PlacedSegment(Segment("net.a", Triplet(1, 1, 1, 10.0, 10.0)), 0, 1)),
        (Service("Net_A", 5.0, 100.0), Service("net.a", 5.0, 100.0)))
    with pytest.raises(ParvaError, match="same Service name"):
        k8s_manifests(plan, "{}")


@pytest.mark.parametrize("kw", [{"image": " "}, {"port": 0}, {"node_label": "bad key!"}])
def test_bad_export_options_are_errors(plan, kw):
    with pytest.raises(ParvaError):
        k8s_deployments(plan, **kw)


def test_node_selector_label_script(plan):
    script = k8s_files(plan, MODELS_TEXT)["node-selector-labels.sh"]
    nodes = sorted({plan.node_of(s.gpu) for s in plan.segments})
    for n in nodes:
        assert f"{DEFAULT_NODE_LABEL}={n}" in script and f"NODE{n}" in script
    subprocess.run(["sh", "-n"], input=script, text=True, check=True)


def _stub_bin(tmp_path, start_s: float = 0.0):
    """A stand-in MPS control command logging what it is asked; its start takes `start_s` seconds."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    stub = bindir / "nvidia-cuda-mps-control"
    stub.write_text(
        '#!/bin/sh\n'
        'if [ "${1:-}" = "-d" ]; then echo "start $CUDA_MPS_PIPE_DIRECTORY" >> "$LOG"; '
        f'sleep {start_s}; exit 0; fi\n'
        'read cmd; echo "$cmd $CUDA_MPS_PIPE_DIRECTORY" >> "$LOG"\n'
    )
    stub.chmod(0o755)
    return bindir


def _run_pod_script(tmp_path, gpu: str | None, stop_at: str = "serve --segment", start_s: float = 0.0):
    """The pod's script around a stand-in serve command, stopped with SIGTERM once the log shows
    `stop_at`: the log."""
    log = tmp_path / "log"
    env = {
        **{k: v for k, v in os.environ.items() if k != "NVIDIA_VISIBLE_DEVICES"},
        "PATH": f"{_stub_bin(tmp_path, start_s)}:{os.environ['PATH']}",
        "LOG": str(log),
        "CUDA_MPS_PIPE_DIRECTORY": str(tmp_path / "mps" / "pipe"),
        "CUDA_MPS_LOG_DIRECTORY": str(tmp_path / "mps" / "log"),
    }
    if gpu is not None:
        env["NVIDIA_VISIBLE_DEVICES"] = gpu
    serve = ('echo "serve $* $CUDA_MPS_PIPE_DIRECTORY" >> "$LOG"; '
             'trap \'echo "serve stopped" >> "$LOG"; exit 0\' TERM; while :; do sleep 0.05; done')
    proc = subprocess.Popen(["/bin/sh", "-c", POD_SCRIPT, "parvagpu-segment", "sh", "-c", serve, "serve",
                             "--segment", "m-n0-g0-s0"], env=env)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (not log.exists() or stop_at not in log.read_text()):
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    return log.read_text().splitlines(), env["CUDA_MPS_PIPE_DIRECTORY"]


def test_pod_script_starts_mps_then_serve_and_stops_serve_before_mps(tmp_path):
    lines, pipe = _run_pod_script(tmp_path, "MIG-5d7c7b9e-0000-0000-0000-000000000000")
    assert lines == [f"start {pipe}", f"serve --segment m-n0-g0-s0 {pipe}", "serve stopped", f"quit {pipe}"]
    assert (tmp_path / "mps" / "pipe").is_dir() and (tmp_path / "mps" / "log").is_dir()


def test_pod_script_without_a_gpu_runs_serve_without_mps(tmp_path):
    lines, pipe = _run_pod_script(tmp_path, None)
    assert lines == [f"serve --segment m-n0-g0-s0 {pipe}", "serve stopped"]


def test_pod_script_stopped_before_serve_starts_exits_cleanly(tmp_path):
    """A pod deleted while MPS starts: the stop runs before the serve command has a process id
    (the shell defers the trap until MPS's start returns); MPS quits, the script exits 0."""
    lines, pipe = _run_pod_script(tmp_path, "MIG-5d7c7b9e-0000-0000-0000-000000000000", stop_at="start",
                                  start_s=0.3)
    assert lines == [f"start {pipe}", f"quit {pipe}"]


# -- mig-parted -----------------------------------------------------------------------------------


def test_mig_parted_config_is_valid_v1_and_matches_the_plan(plan):
    text = mig_parted_files(plan, "plan.json")["mig-parted.yaml"]
    assert text.startswith("#") and "cannot pin start slots" in text
    data = yaml.safe_load(text)
    assert check_mig_parted(data) == []
    gpu = gpu_type(plan.gpu_type)
    by_name = {p.name: p.size for p in gpu.profiles}
    nodes = sorted({plan.node_of(s.gpu) for s in plan.segments})
    assert list(data["mig-configs"]) == [config_name(n) for n in nodes]
    for n in nodes:
        groups = data["mig-configs"][config_name(n)]
        assert [g["devices"] for g in groups] == [[i] for i in range(plan.gpus_per_node)]
        for i, g in enumerate(groups):
            sizes = sorted(s.size for s in plan.segments if s.gpu == n * plan.gpus_per_node + i)
            got = sorted(by_name[p] for p, k in g["mig-devices"].items() for _ in range(k))
            assert got == sizes
            assert g["mig-enabled"] is True
            assert gpu.realizable(tuple(got))  # mig-parted can always realise the multiset


def test_mig_parted_device_filter_option(plan):
    data = mig_parted_config(plan, device_filter=True)
    assert check_mig_parted(data) == []
    first = next(iter(data["mig-configs"].values()))[0]
    assert first["device-filter"] == list(gpu_type(plan.gpu_type).pci_device_ids)


def test_mig_parted_configmap_and_labels(plan):
    files = mig_parted_files(plan, "plan.json")
    cm = yaml.safe_load(files["mig-parted-configmap.yaml"])
    kv.validate(cm, K8S_VERSIONS[-1], strict=True)
    assert check_mig_parted(yaml.safe_load(cm["data"]["config.yaml"])) == []
    labels = yaml.safe_load(files["node-labels.yaml"])
    nodes = sorted({plan.node_of(s.gpu) for s in plan.segments})
    assert labels == {"nodes": [{"node": n, "labels": {MIG_CONFIG_LABEL: config_name(n)}} for n in nodes]}
    script = files["mig-config-labels.sh"]
    assert all(f"{MIG_CONFIG_LABEL}={config_name(n)} --overwrite" in script for n in nodes)
    subprocess.run(["sh", "-n"], input=script, text=True, check=True)


GOOD = {"version": "v1", "mig-configs": {"c": [{"devices": [0], "mig-enabled": True, "mig-devices": {"3g.40gb": 2}}]}}


def _bad(edit):
    import copy

    d = copy.deepcopy(GOOD)
    edit(d)
    return d


@pytest.mark.parametrize(
    "data, match",
    [
        (_bad(lambda d: d.pop("version")), "missing 'version'"),
        (_bad(lambda d: d.update(version="v2")), "unknown version"),
        (_bad(lambda d: d.update(extra=1)), "unexpected field 'extra'"),
        (_bad(lambda d: d.update({"mig-configs": {}})), "non-empty mapping"),
        (_bad(lambda d: d["mig-configs"].update(c=[])), "non-empty list"),
        (_bad(lambda d: d["mig-configs"]["c"][0].update(devices=7)), "'devices' must be"),
        (_bad(lambda d: d["mig-configs"]["c"][0].update(devices="0")), "'devices' must be"),
        (_bad(lambda d: d["mig-configs"]["c"][0].pop("mig-enabled")), "missing required field 'mig-enabled'"),
        (_bad(lambda d: d["mig-configs"]["c"][0].pop("mig-devices")), "'mig-devices' is required"),
        (_bad(lambda d: d["mig-configs"]["c"][0].update({"mig-enabled": False})), "while 'mig-enabled' is false"),
        (_bad(lambda d: d["mig-configs"]["c"][0].update({"mig-enabled": "yes"})), "true or false"),
        (_bad(lambda d: d["mig-configs"]["c"][0].update({"mig-devices": {"3g.40": 1}})), "not a MIG profile"),
        (_bad(lambda d: d["mig-configs"]["c"][0].update({"mig-devices": {"5g.40gb": 1}})), "not a MIG profile"),
        (_bad(lambda d: d["mig-configs"]["c"][0].update({"mig-devices": {"1g.10gb+xx": 1}})), "unknown attribute"),
        (_bad(lambda d: d["mig-configs"]["c"][0].update({"mig-devices": {"3g.40gb": -1}})), "non-negative"),
        (_bad(lambda d: d["mig-configs"]["c"][0].update({"mig-devices": {"3g.40gb": 0}})), "all counts"),
        (_bad(lambda d: d["mig-configs"]["c"][0].update(gpus=[0])), "unexpected field 'gpus'"),
        (_bad(lambda d: d["mig-configs"]["c"][0].update({"device-filter": "20B2"})), "device-filter"),
        (_bad(lambda d: d["mig-configs"]["c"].append(d["mig-configs"]["c"][0])), "listed twice"),
    ],
)
def test_strict_mig_parted_check_rejects(data, match):
    problems = check_mig_parted(data)
    assert any(match in p for p in problems), problems


@pytest.mark.parametrize(
    "group",
    [
        {"devices": "all", "mig-enabled": False},
        {"devices": "all", "mig-enabled": True, "mig-devices": {}},
        {"devices": [0, 1], "device-filter": ["0x20B210DE"], "mig-enabled": True,
         "mig-devices": {"1c.3g.40gb": 3, "1g.10gb+me": 1, "1g.20gb": 0}},
    ],
)
def test_strict_mig_parted_check_accepts_upstream_shapes(group):
    assert check_mig_parted({"version": "v1", "mig-configs": {"x": [group]}}) == []


def test_write_files_refuses_a_file_as_directory(tmp_path, plan):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(ParvaError, match="not a directory"):
        write_files(target, mig_parted_files(plan, "p"))
    out = write_files(tmp_path / "a" / "b", mig_parted_files(plan, "p"))
    assert {p.name for p in out} == {"mig-parted.yaml", "mig-parted-configmap.yaml", "node-labels.yaml", "mig-config-labels.sh"}
    assert os.access(tmp_path / "a" / "b" / "mig-config-labels.sh", os.X_OK)


def _tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("verb", ["k8s", "mig-parted"])
def test_export_writes_all_files_or_none(tmp_path, verb, monkeypatch):
    """A target that cannot be written (a directory in its place, or a rename that fails midway)
    leaves no file of the export behind, and keeps the files that were there."""
    from apply_support import write_plan
    from typer.testing import CliRunner

    from parvagpu.cli import app

    plan = write_plan(scenario_plan(6), tmp_path / "s6.json")
    runner = CliRunner()
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    blocked = "node-labels.yaml" if verb == "mig-parted" else "node-selector-labels.sh"
    (out / blocked).mkdir()
    r = runner.invoke(app, ["export", verb, str(plan), "--out", str(out)])
    assert r.exit_code == 2 and "is not a regular file" in r.stderr and "nothing written" in r.stderr, r.output
    assert _tree(out) == ["keep.txt", blocked]
    (out / blocked).rmdir()

    real_replace, calls = os.replace, []

    def flaky(src, dst):
        calls.append(dst)
        if len(calls) == 3:
            raise OSError(28, "No space left on device", str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", flaky)
    fresh = tmp_path / "new" / "dir"
    for target in (out, fresh):
        calls.clear()
        r = runner.invoke(app, ["export", verb, str(plan), "--out", str(target)])
        assert r.exit_code == 2 and "No space left on device" in r.stderr and "nothing written" in r.stderr, r.output
    assert _tree(out) == ["keep.txt"]
    assert not (tmp_path / "new").exists()  # directories it made are removed again
    monkeypatch.setattr(os, "replace", real_replace)
    r = runner.invoke(app, ["export", verb, str(plan), "--out", str(out)])
    assert r.exit_code == 0 and len(_tree(out)) > 3 and not [p for p in _tree(out) if p.endswith(".tmp")]
