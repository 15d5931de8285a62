"""apply / status / teardown / export from the command line, on a fake node kept in a file."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import yaml
from apply_support import scenario_plan, write_plan
from typer.testing import CliRunner

from parvagpu.node import NodeDirs, read_state
from parvagpu.cli import app
from parvagpu.export.mig_parted import check_mig_parted

runner = CliRunner()


def run(*args, env=None):
    return runner.invoke(app, [str(a) for a in args], env=env)


@pytest.fixture
def s6(tmp_path):
    return write_plan(scenario_plan(6), tmp_path / "s6.json")


@pytest.fixture
def s5(tmp_path):
    return write_plan(scenario_plan(5), tmp_path / "s5.json")


@pytest.fixture
def node(tmp_path):
    """Options for a fake node 0 that persists across invocations."""
    return ["--node", 0, "--backend", "fake", "--fake-state", tmp_path / "fake.json", "--state-dir", tmp_path / "st"]


def one_error_line(r, code=2):
    assert r.exit_code == code, r.output
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.output
    return lines[0]


def test_dry_run_on_the_embedded_example_prints_readable_steps(tmp_path):
    """`plan` on the embedded example, then `apply --backend fake --dry-run`."""
    plan = tmp_path / "plan.json"
    assert run("plan", "-s", 1, "--out", plan).exit_code == 0
    r = run("apply", plan, "--node", 0, "--backend", "fake", "--dry-run", "--state-dir", tmp_path / "st")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].startswith("node 0 (A100-80GB, backend fake):") and "dry run, nothing changed" in lines[0]
    n = len(lines) - 1
    assert n == 3 * len(json.loads(plan.read_text())["segments"])
    assert re.fullmatch(r"\s+1\. gpu 0: create GPU instance \dg\.\d+gb \(profile \d+\) at start \d", lines[1]), lines[1]
    assert "create compute instance" in lines[2] and "start MPS daemon" in lines[3] and "nvidia-mps-0-" in lines[3]
    assert not (tmp_path / "st").exists()


def test_apply_status_teardown_round_trip(tmp_path, s6, s5, node):
    fake_file = tmp_path / "fake.json"
    r = run("apply", s6, *node)
    assert r.exit_code == 0, r.output
    assert "applied 93 steps (31 create-gi, 31 create-ci, 31 start-mps)" in r.stdout
    state = NodeDirs(tmp_path / "st", 0).state_file
    assert read_state(state) is not None and fake_file.exists()

    r = run("apply", s6, *node)
    assert r.exit_code == 0 and "nothing to do" in r.stdout
    r = run("status", *node, "--plan", s6, "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["matches_plan"] is True and doc["drift"] == []
    insts = [i for i in doc["instances"] if i["instance"]]
    assert len(insts) == 31 and all(i["mps"] and i["mig_uuid"].startswith("MIG-") and i["segment"] for i in insts)

    r = run("status", *node, "--plan", s5)
    assert r.exit_code == 1 and "apply would take" in r.stdout
    r = run("status", *node)
    assert r.exit_code == 0 and "7g.80gb@0" in r.stdout

    r = run("apply", s5, *node)
    assert r.exit_code == 0 and "bind" in r.stdout
    assert run("status", *node, "--plan", s5).exit_code == 0

    r = run("teardown", *node, "--dry-run")
    assert r.exit_code == 0 and "destroy GPU instance" in r.stdout
    r = run("teardown", *node)
    assert r.exit_code == 0 and "tore down" in r.stdout
    assert not state.exists()
    assert run("teardown", *node).stdout.strip().endswith("nothing to tear down")
    saved = json.loads(fake_file.read_text())
    assert all(g["instances"] == [] for g in saved["mig"]["gpus"]) and saved["mps"]["daemons"] == {}


def test_fake_state_from_the_environment(tmp_path, s6, monkeypatch):
    env = {"PARVAGPU_FAKE_STATE": str(tmp_path / "f.json"), "PARVAGPU_STATE_DIR": str(tmp_path / "st")}
    assert run("apply", s6, "--node", 2, "--backend", "fake", env=env).exit_code == 0
    r = run("status", "--node", 2, "--backend", "fake", "--plan", s6, env=env)
    assert r.exit_code == 0 and "matches" in r.stdout


def test_refusal_and_force(tmp_path, s6, s5, node):
    assert run("apply", s6, *node).exit_code == 0
    fake_file = tmp_path / "fake.json"
    saved = json.loads(fake_file.read_text())
    # a worker on gpu 0's 7g instance, which scenario 5 replaces
    saved["mig"]["gpus"][0]["instances"][0]["processes"].append({"pid": 4242, "name": "python3"})
    fake_file.write_text(json.dumps(saved))
    line = one_error_line(run("apply", s5, *node), code=1)
    assert "runs processes 4242" in line and "--force" in line
    assert json.loads(fake_file.read_text()) == saved
    r = run("apply", s5, *node, "--force")
    assert r.exit_code == 0 and "1 kill-processes" in r.stdout


def test_injected_failure_rolls_back_through_the_cli(tmp_path, s6, s5, node, monkeypatch):
    from parvagpu.hardware.mig import FakeBackend

    assert run("apply", s6, *node).exit_code == 0
    before = json.loads((tmp_path / "fake.json").read_text())
    real_create = FakeBackend.create_gpu_instance
    calls = []

    def flaky(self, gpu, profile_id, start):
        calls.append(1)
        if len(calls) == 5:
            from parvagpu.hardware.mig import InsufficientResources

            raise InsufficientResources("injected")
        return real_create(self, gpu, profile_id, start)

    monkeypatch.setattr(FakeBackend, "create_gpu_instance", flaky)
    line = one_error_line(run("apply", s5, *node), code=1)
    assert "step" in line and "injected" in line and "the node is as it was" in line
    after = json.loads((tmp_path / "fake.json").read_text())
    shape = lambda d: [sorted((i["profile_id"], i["start"]) for i in g["instances"]) for g in d["mig"]["gpus"]]  # noqa: E731
    assert shape(after) == shape(before)
    assert sorted(after["mps"]["daemons"]) == sorted(before["mps"]["daemons"])


@pytest.mark.parametrize(
    "args, needle",
    [
        (["apply", "{s6}", "--node", 3, "--backend", "fake"], "the plan has no node 3"),
        (["apply", "{missing}", "--node", 0, "--backend", "fake"], "cannot read plan"),
        (["apply", "{bad}", "--node", 0, "--backend", "fake"], "invalid JSON"),
        (["apply", "{s6}", "--node", 0, "--backend", "fake", "--fake-gpus", 2], "which has 2 GPU"),
        (["apply", "{s6}", "--node", 0, "--backend", "fake", "--fake-state", "{bad}"], "bad.json: invalid JSON"),
        (["status", "--node", 0, "--backend", "fake", "--plan", "{bad}"], "invalid JSON"),
        (["export", "k8s", "{missing}", "--out", "{out}"], "cannot read plan"),
        (["export", "k8s", "{s6}", "--out", "{s6}"], "not a directory"),
        (["export", "mig-parted", "{bad}", "--out", "{out}"], "invalid JSON"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, s6, args, needle):
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    plan = json.loads(s6.read_text())
    seg = next(s for s in plan["segments"] if s["size"] == 3)
    seg["start"] = 2
    illegal = tmp_path / "illegal.json"
    illegal.write_text(json.dumps(plan))
    subst = {"{s6}": s6, "{missing}": tmp_path / "none.json", "{bad}": bad, "{illegal}": illegal, "{out}": tmp_path / "out"}
    argv = [subst.get(a, a) if isinstance(a, str) else a for a in args]
    before = sorted(p.name for p in tmp_path.iterdir())
    line = one_error_line(run(*argv, "--state-dir", tmp_path / "st") if argv[0] in ("apply", "status") else run(*argv))
    assert needle in line
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("verb", ["apply", "status", "teardown"])
def test_nvml_backend_without_a_driver_is_a_system_failure(tmp_path, s6, monkeypatch, verb):
    """No driver is the machine's failure, not bad input: one line, exit 4, nothing written."""
    pytest.importorskip("pynvml", reason="nvidia-ml-py is not installed")
    from nvml_stub import StubNvml

    from parvagpu.hardware.mig import FakeBackend

    monkeypatch.setitem(sys.modules, "pynvml", StubNvml(FakeBackend(), driver=False))
    args = {"apply": ["apply", s6], "status": ["status"], "teardown": ["teardown"]}[verb]
    before = sorted(p.name for p in tmp_path.iterdir())
    line = one_error_line(run(*args, "--node", 0, "--state-dir", tmp_path / "st"), code=4)
    assert "cannot initialise NVML" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_without_nvidia_ml_py_the_nvml_backend_is_bad_input_with_the_install_hint(tmp_path, s6, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    line = one_error_line(run("apply", s6, "--node", 0, "--state-dir", tmp_path / "st"), code=2)
    assert "pip install 'parvagpu[nvml]'" in line


def test_a_hardware_error_while_reading_the_node_is_exit_4(tmp_path, s6, node, monkeypatch):
    from parvagpu.hardware.mig import FakeBackend, NoPermission

    assert run("apply", s6, *node).exit_code == 0

    def denied(self, gpu):
        raise NoPermission("nvmlDeviceGetGpuInstances: Insufficient Permissions")

    monkeypatch.setattr(FakeBackend, "list_instances", denied)
    for args in (["status"], ["apply", s6], ["teardown"]):
        line = one_error_line(run(*args, *node), code=4)
        assert "Insufficient Permissions" in line


def test_a_rollback_that_cannot_finish_is_exit_4(tmp_path, s6, s5, node, monkeypatch):
    """A failed step is exit 1 when rolled back; when undoing fails too the node is in neither
    layout, which is the machine's failure: exit 4, and the line says to check `status`."""
    from parvagpu.hardware.mig import FakeBackend, InsufficientResources, InUse

    assert run("apply", s6, *node).exit_code == 0
    real_create = FakeBackend.create_gpu_instance
    calls = []

    def flaky(self, gpu, profile_id, start):
        calls.append(1)
        if len(calls) == 5:
            raise InsufficientResources("injected")
        return real_create(self, gpu, profile_id, start)

    real_destroy = FakeBackend.destroy_gpu_instance

    def stuck(self, gpu, gi_id):
        if len(calls) >= 5:  # only while undoing
            raise InUse("injected: cannot destroy")
        return real_destroy(self, gpu, gi_id)

    monkeypatch.setattr(FakeBackend, "create_gpu_instance", flaky)
    monkeypatch.setattr(FakeBackend, "destroy_gpu_instance", stuck)
    line = one_error_line(run("apply", s5, *node), code=4)
    assert "rollback incomplete" in line and "parvagpu status" in line


def test_a_node_held_by_another_agent_is_refused_with_exit_1(tmp_path, s6, node):
    from parvagpu.node import node_lock

    with node_lock(NodeDirs(tmp_path / "st", 0)):
        for args in (["apply", s6], ["teardown"]):
            line = one_error_line(run(*args, *node), code=1)
            assert "being changed by another parvagpu process" in line
    assert run("apply", s6, *node).exit_code == 0


def test_export_k8s_and_mig_parted(tmp_path, s6):
    r = run("export", "k8s", s6, "--out", tmp_path / "k8s", "--image", "img:1", "--node-label", "example.com/n")
    assert r.exit_code == 0, r.output
    files = sorted((tmp_path / "k8s").iterdir())
    plan = scenario_plan(6)
    # the ConfigMap, a Deployment per segment, a Service per model, the labelling script
    assert len(files) == 1 + len(plan.segments) + len(plan.services) + 1
    doc = yaml.safe_load(next(f for f in files if f.name.startswith("parvagpu-n")).read_text())
    assert doc["kind"] == "Deployment" and doc["spec"]["template"]["spec"]["containers"][0]["image"] == "img:1"
    assert list(doc["spec"]["template"]["spec"]["nodeSelector"]) == ["example.com/n"]
    r = run("export", "mig-parted", s6, "--out", tmp_path / "mp")
    assert r.exit_code == 0, r.output
    assert check_mig_parted(yaml.safe_load((tmp_path / "mp" / "mig-parted.yaml").read_text())) == []


def test_help_lists_the_node_verbs():
    r = run("--help")
    for verb in ("apply", "status", "teardown", "export"):
        assert verb in r.stdout
    r = run("export", "--help")
    assert "k8s" in r.stdout and "mig-parted" in r.stdout


def test_real_process_exit_code(tmp_path, s6):
    r = subprocess.run(
        [sys.executable, "-m", "parvagpu", "apply", str(s6), "--node", "9", "--backend", "fake"],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr and "no node 9" in r.stderr


def test_fake_state_that_cannot_be_saved_is_refused_before_anything_changes(tmp_path, s6):
    """The fake node's file is checked first: a missing directory or a non-file in its place is
    one line, exit 2, and no node state is written."""
    (tmp_path / "adir").mkdir()
    (tmp_path / "link.json").symlink_to(tmp_path / "elsewhere.json")
    for fake_state in (tmp_path / "missing" / "f.json", tmp_path / "adir", tmp_path / "link.json"):
        before = sorted(p.name for p in tmp_path.iterdir())
        r = run("apply", s6, "--node", 0, "--backend", "fake", "--fake-state", fake_state, "--state-dir", tmp_path / "st")
        line = one_error_line(r)
        assert "--fake-state" in line
        assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert not (tmp_path / "elsewhere.json").exists()


def test_fake_gpus_is_bounded(tmp_path, s6):
    r = run("apply", s6, "--node", 0, "--backend", "fake", "--fake-gpus", 1_000_000_000, "--state-dir", tmp_path / "st")
    assert "a fake node has 1..1024 GPUs" in one_error_line(r)


def test_commands_on_one_fake_state_file_take_turns(tmp_path, s6, node):
    """An apply waits while another command holds the fake node's file, so no update is lost."""
    import fcntl
    import os
    import threading

    fd = os.open(tmp_path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("r", run("apply", s6, *node)))
    t.start()
    t.join(timeout=1.5)
    waited = t.is_alive()
    os.close(fd)  # releases the lock
    t.join(timeout=60)
    assert waited, "apply did not wait for the fake node's lock"
    assert result["r"].exit_code == 0, result["r"].output
    assert (tmp_path / "fake.json").exists()


def test_user_text_is_printed_as_is_not_as_markup(tmp_path, s6, node):
    """A model name with Rich markup in it is shown literally by apply, status and teardown."""
    doc = json.loads(s6.read_text())
    old = doc["segments"][0]["model"]
    odd = "[bold]odd[/]"
    text = json.dumps(doc).replace(f'"{old}"', json.dumps(odd))
    plan = tmp_path / "odd.json"
    plan.write_text(text)
    r = run("apply", plan, *node)
    assert r.exit_code == 0, r.output
    r = run("status", *node)
    assert r.exit_code == 0 and f"{odd} b" in r.stdout, r.output
    r = run("status", *node, "--plan", s6)  # the kept instances are re-bound to the old model
    assert r.exit_code == 1 and f"to {old} b" in r.stdout
    r = run("apply", s6, *node, "--dry-run")
    assert r.exit_code == 0 and "bind" in r.stdout


def test_export_k8s_help_shows_its_defaults():
    r = run("export", "k8s", "--help", env={"COLUMNS": "200"})
    assert "parvagpu:latest" in r.stdout and "parvagpu.io/node" in r.stdout and "8000" in r.stdout


@pytest.mark.parametrize("verb", ["apply", "status", "teardown"])
def test_a_negative_node_index_is_refused(tmp_path, s6, verb):
    args = ["apply", s6] if verb == "apply" else [verb]
    line = one_error_line(run(*args, "--node", -1, "--backend", "fake", "--state-dir", tmp_path / "st"))
    assert "--node must be a plan node index" in line and not (tmp_path / "st").exists()
