"""The MigBackend contract and the strict fake.

Read-only contract tests run against every backend: the fake always, NVML only where a driver
answers (they never create, destroy or change MIG mode on real hardware). The fake must refuse
everything real hardware refuses, and inject failures on request.
"""

from __future__ import annotations

import json
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parvagpu.core.gpus import GPU_TYPES, gpu_type
from parvagpu.hardware.mig import (
    MUTATING,
    FakeBackend,
    InjectedFailure,
    InsufficientResources,
    InUse,
    InvalidArgument,
    MigBackend,
    MigError,
    NotFound,
    NotSupported,
    mutating_calls,
)
from parvagpu.core.errors import ParvaError, SystemFailure
from parvagpu.hardware.mps import FakeMps, MpsError


def _nvml_or_skip() -> MigBackend:
    try:
        from parvagpu.hardware.mig import open_nvml

        return open_nvml()
    except ParvaError as exc:
        pytest.skip(f"no NVML here: {exc}")


def _stubbed_nvml(monkeypatch, fake: FakeBackend) -> MigBackend:
    """The real nvml backend's code over a pynvml-shaped stand-in driving `fake`."""
    pytest.importorskip("pynvml", reason="nvidia-ml-py is not installed")
    from nvml_stub import StubNvml

    from parvagpu.hardware.mig.nvml import NvmlBackend

    monkeypatch.setitem(sys.modules, "pynvml", StubNvml(fake))
    return NvmlBackend()


@pytest.fixture(params=["fake", "nvml-stub", "nvml"])
def backend(request, monkeypatch):
    if request.param == "nvml":
        b = _nvml_or_skip()
    else:
        fake = FakeBackend("A100-80GB", 2)
        gi = fake.create_gpu_instance(1, 9, 4)
        fake.create_compute_instance(1, gi)
        fake.calls.clear()
        b = fake if request.param == "fake" else _stubbed_nvml(monkeypatch, fake)
    yield b
    b.close()


@pytest.fixture(params=["fake", "nvml-stub"])
def pair(request, monkeypatch):
    """(backend under test, the fake node behind it) for the mutating contract tests."""
    fake = FakeBackend("A100-80GB", 2)
    return (fake if request.param == "fake" else _stubbed_nvml(monkeypatch, fake)), fake


# -- contract (read-only), any backend ---------------------------------------------------------


def test_contract_is_a_migbackend(backend):
    assert isinstance(backend, MigBackend)


def test_contract_devices_have_known_types_and_boolean_modes(backend):
    n = backend.gpu_count()
    assert n >= 1
    for g in range(n):
        assert backend.gpu_type(g) in GPU_TYPES
        cur, pending = backend.mig_mode(g)
        assert isinstance(cur, bool) and isinstance(pending, bool)
    assert backend.calls["gpu_count"] == 1 and backend.calls["gpu_type"] == n


def test_contract_placements_match_the_gpu_table(backend):
    """The placement table the planner uses is what the backend offers."""
    for g in range(backend.gpu_count()):
        t = gpu_type(backend.gpu_type(g))
        for p in t.profiles:
            offered = set(backend.possible_placements(g, p.profile_id))
            assert offered == {(s, p.memory_slices) for s in p.starts}, p.name


def test_contract_listed_instances_are_legal_and_disjoint(backend):
    for g in range(backend.gpu_count()):
        if not backend.mig_mode(g)[0]:
            continue
        t = gpu_type(backend.gpu_type(g))
        used = 0
        for inst in backend.list_instances(g):
            prof = next((p for p in t.profiles if p.profile_id == inst.profile_id), None)
            if prof is None:  # a profile the planner does not use (e.g. +me): only check overlap
                mask = ((1 << inst.width) - 1) << inst.start
            else:
                assert inst.start in prof.starts and inst.width == prof.memory_slices
                mask = t.mask(prof.size, inst.start)
            assert not used & mask
            used |= mask
            for ci in inst.cis:
                assert ci.uuid is None or ci.uuid.startswith("MIG-")
    assert mutating_calls(backend.calls) == 0


# -- contract (mutating): the fake, and the nvml backend over the stand-in ---------------------


@pytest.fixture
def fake():
    return FakeBackend("A100-80GB", 2)


def test_create_at_exact_start_and_list(pair):
    b, _ = pair
    gi = b.create_gpu_instance(0, 9, 4)
    ci = b.create_compute_instance(0, gi)
    uuid = b.mig_uuid(0, gi, ci)
    (inst,) = b.list_instances(0)
    assert (inst.gi_id, inst.profile_id, inst.start, inst.width, inst.slices) == (gi, 9, 4, 4, 3)
    assert inst.whole_ci and inst.uuid == uuid and uuid.startswith("MIG-")
    assert b.list_instances(1) == ()


def test_uuids_are_unique_even_after_recreation(pair):
    b, _ = pair
    seen = set()
    for _ in range(3):
        gi = b.create_gpu_instance(0, 19, 0)
        ci = b.create_compute_instance(0, gi)
        seen.add(b.mig_uuid(0, gi, ci))
        b.destroy_compute_instance(0, gi, ci)
        b.destroy_gpu_instance(0, gi)
    assert len(seen) == 3


@pytest.mark.parametrize(
    "first, second",
    [((9, 4), (19, 6)), ((9, 4), (9, 4)), ((0, 0), (19, 3)), ((14, 2), (19, 3)), ((5, 0), (9, 0))],
)
def test_overlap_is_insufficient_resources(pair, first, second):
    b, _ = pair
    b.create_gpu_instance(0, *first)
    with pytest.raises(InsufficientResources):
        b.create_gpu_instance(0, *second)
    assert len(b.list_instances(0)) == 1


@pytest.mark.parametrize("profile_id, start", [(9, 2), (14, 1), (0, 4), (5, 4), (19, 7), (19, -1)])
def test_illegal_start_is_rejected(pair, profile_id, start):
    b, _ = pair
    with pytest.raises(InvalidArgument):
        b.create_gpu_instance(0, profile_id, start)
    assert b.list_instances(0) == ()


@pytest.mark.parametrize("profile_id", [1, 7, 21, 99])  # 21: an A30 +me profile, not an A100 one
def test_unknown_profile_is_not_supported(pair, profile_id):
    b, _ = pair
    with pytest.raises(NotSupported):
        b.create_gpu_instance(0, profile_id, 0)
    with pytest.raises(NotSupported):
        b.possible_placements(0, profile_id)


def test_mig_mode_off_refuses_work(pair):
    b, fake = pair
    fake.set_mig_mode(1, False)
    assert b.mig_mode(1) == (False, False)
    with pytest.raises(NotSupported):
        b.create_gpu_instance(1, 9, 0)
    with pytest.raises(NotSupported):
        fake.list_instances(1)


def test_cannot_disable_mig_with_instances(fake):
    fake.create_gpu_instance(0, 9, 0)
    with pytest.raises(InUse):
        fake.set_mig_mode(0, False)


def test_destroy_gi_with_ci_is_in_use(pair):
    b, _ = pair
    gi = b.create_gpu_instance(0, 14, 0)
    ci = b.create_compute_instance(0, gi)
    with pytest.raises(InUse):
        b.destroy_gpu_instance(0, gi)
    b.destroy_compute_instance(0, gi, ci)
    b.destroy_gpu_instance(0, gi)
    assert b.list_instances(0) == ()


def test_destroy_with_processes_is_in_use(pair):
    b, fake = pair
    gi = b.create_gpu_instance(0, 14, 0)
    ci = b.create_compute_instance(0, gi)
    pid = fake.add_process(0, gi, name="python3")
    assert [(p.pid, p.name) for p in b.running_processes(0, gi)] == [(pid, "python3")]
    with pytest.raises(InUse):
        b.destroy_compute_instance(0, gi, ci)
    fake.kill_processes((pid,))
    b.destroy_compute_instance(0, gi, ci)


def test_unknown_ids_are_not_found(pair):
    b, _ = pair
    with pytest.raises(NotFound):
        b.destroy_gpu_instance(0, 5)
    gi = b.create_gpu_instance(0, 19, 0)
    with pytest.raises(NotFound):
        b.destroy_compute_instance(0, gi, 3)
    with pytest.raises(NotFound):
        b.mig_uuid(0, gi, 0)
    with pytest.raises(InvalidArgument):
        b.list_instances(2)


def test_compute_instances_cannot_exceed_the_gi(pair):
    b, _ = pair
    gi = b.create_gpu_instance(0, 9, 0)
    b.create_compute_instance(0, gi, 2)
    with pytest.raises(InsufficientResources):
        b.create_compute_instance(0, gi, 2)
    b.create_compute_instance(0, gi, 1)
    assert sorted(c.slices for c in b.list_instances(0)[0].cis) == [1, 2]
    with pytest.raises(NotSupported):
        b.create_compute_instance(0, gi, 4)


def test_full_layouts_from_the_table_are_accepted(fake):
    """Every maximal layout the GPU table enumerates can be created, largest first."""
    t = gpu_type("A100-80GB")
    layouts = t.layouts()
    full = [lay for lay in layouts if sum(s for s, _ in lay) == 7]
    assert len({tuple(sorted(s for s, _ in lay)) for lay in full}) == 11
    for lay in full:
        f = FakeBackend("A100-80GB", 1)
        for size, start in sorted(lay, key=lambda x: -x[0]):
            f.create_gpu_instance(0, t.profile(size).profile_id, start)
        assert len(f.list_instances(0)) == len(lay)


def test_calls_are_counted_and_mutations_classified(fake):
    gi = fake.create_gpu_instance(0, 19, 0)
    fake.create_compute_instance(0, gi)
    fake.list_instances(0)
    assert fake.calls["create_gpu_instance"] == 1 and fake.calls["list_instances"] == 1
    assert mutating_calls(fake.calls) == 2
    assert MUTATING == {"create_gpu_instance", "create_compute_instance", "destroy_compute_instance", "destroy_gpu_instance"}


# -- failure injection -------------------------------------------------------------------------


def test_inject_failure_at_nth_call(fake):
    fake.fail_at(2)
    fake.gpu_count()
    fake.mig_mode(0)
    with pytest.raises(InjectedFailure):
        fake.list_instances(0)
    fake.list_instances(0)  # one-shot


def test_inject_failure_at_nth_call_of_a_method(fake):
    fake.fail_at(1, "create_gpu_instance", InsufficientResources("boom"))
    fake.create_gpu_instance(0, 19, 0)
    fake.list_instances(0)
    with pytest.raises(InsufficientResources, match="boom"):
        fake.create_gpu_instance(0, 19, 1)
    assert len(fake.list_instances(0)) == 1


def test_injected_failure_is_a_user_facing_error():
    assert issubclass(InjectedFailure, MigError) and issubclass(MigError, ParvaError)


# -- persistence -------------------------------------------------------------------------------


def test_state_round_trips_through_json(fake):
    gi = fake.create_gpu_instance(0, 9, 4)
    ci = fake.create_compute_instance(0, gi)
    fake.add_process(0, gi, pid=777)
    fake.set_mig_mode(1, False)
    again = FakeBackend.from_dict(json.loads(json.dumps(fake.to_dict())))
    assert again.list_instances(0) == fake.list_instances(0)
    assert again.mig_mode(1) == (False, False)
    assert [p.pid for p in again.running_processes(0, gi)] == [777]
    # the UUID counter survives, so new UUIDs stay unique
    gi2 = again.create_gpu_instance(0, 19, 0)
    assert again.mig_uuid(0, gi2, again.create_compute_instance(0, gi2)) != fake.mig_uuid(0, gi, ci)


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d["gpus"][0]["instances"].append({"gi_id": 9, "profile_id": 19, "start": 6, "cis": []}),
        lambda d: d["gpus"][0]["instances"][0].update(start=2),
        lambda d: d["gpus"][0]["instances"][0].update(profile_id=21),
        lambda d: d.update(gpu_type="B300"),
        lambda d: d.pop("gpus"),
    ],
)
def test_a_tampered_state_is_refused(fake, edit):
    fake.create_gpu_instance(0, 9, 4)
    d = fake.to_dict()
    edit(d)
    with pytest.raises(ParvaError):
        FakeBackend.from_dict(d)


def test_fake_types_come_from_the_gpu_table():
    for name, t in GPU_TYPES.items():
        f = FakeBackend(name, 1)
        assert f.gpu_type(0) == name
        assert {p for p in (x.profile_id for x in t.all_profiles)} == {
            pid for pid in range(64) if _supported(f, pid)
        }


def _supported(f: FakeBackend, pid: int) -> bool:
    try:
        f.possible_placements(0, pid)
        return True
    except NotSupported:
        return False


# -- fake MPS ----------------------------------------------------------------------------------


def test_fake_mps_is_strict_and_holds_the_instance(fake):
    mps = FakeMps(fake)
    gi = fake.create_gpu_instance(0, 14, 0)
    ci = fake.create_compute_instance(0, gi)
    uuid = fake.mig_uuid(0, gi, ci)
    with pytest.raises(MpsError):
        mps.start("/p", "/l", "MIG-not-there")
    mps.start("/p", "/l", uuid)
    assert mps.is_running("/p")
    with pytest.raises(MpsError):
        mps.start("/p", "/l", uuid)  # one daemon per pipe directory
    # its server holds the instance, as on hardware
    assert [p.is_mps_server for p in fake.running_processes(0, gi)] == [True]
    with pytest.raises(InUse):
        fake.destroy_compute_instance(0, gi, ci)
    mps.stop("/p", "/l")
    with pytest.raises(MpsError):
        mps.stop("/p", "/l")
    fake.destroy_compute_instance(0, gi, ci)


# -- the nvml backend without a driver ----------------------------------------------------------


def test_nvml_without_pynvml_is_one_clear_error(monkeypatch):
    from parvagpu.hardware.mig.nvml import NvmlBackend

    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    with pytest.raises(ParvaError, match=r"nvidia-ml-py.*parvagpu\[nvml\]"):
        NvmlBackend()


def test_nvml_without_driver_is_one_clear_error(monkeypatch):
    pytest.importorskip("pynvml", reason="nvidia-ml-py is not installed")
    from nvml_stub import StubNvml

    from parvagpu.hardware.mig.nvml import NvmlBackend

    monkeypatch.setitem(sys.modules, "pynvml", StubNvml(FakeBackend(), driver=False))
    with pytest.raises(SystemFailure, match="cannot initialise NVML.*driver") as info:
        NvmlBackend()
    assert "\n" not in str(info.value) and info.value.exit_code == 4


def test_nvml_errors_are_system_failures(monkeypatch):
    """Every NVML error the backend maps, and a daemon that fails, exit 4 (not 2, bad input)."""
    b = _stubbed_nvml(monkeypatch, FakeBackend("A100-80GB", 1))
    with pytest.raises(SystemFailure) as info:
        b.create_gpu_instance(0, 9, 1)  # 3g.40gb cannot start at 1
    assert info.value.exit_code == 4
    with pytest.raises(SystemFailure):
        b.destroy_gpu_instance(0, 99)
    with pytest.raises(SystemFailure):
        FakeMps().stop("/nowhere", "/l")


def test_nvml_counts_every_nvml_call(monkeypatch):
    b = _stubbed_nvml(monkeypatch, FakeBackend("A100-80GB", 1))
    gi = b.create_gpu_instance(0, 9, 0)
    b.create_compute_instance(0, gi)
    assert b.calls["create_gpu_instance"] == 1
    assert b.nvml_calls["nvmlDeviceCreateGpuInstanceWithPlacement"] == 1
    assert b.nvml_calls["nvmlGpuInstanceCreateComputeInstance"] == 1


# -- the fake state file reader -------------------------------------------------------------------


def _fake_doc():
    f = FakeBackend("A100-80GB", 2)
    gi = f.create_gpu_instance(0, 9, 4)
    f.create_compute_instance(0, gi)
    m = FakeMps(f)
    m.start("/p", "/l", f.list_instances(0)[0].uuid)
    return {"mig": f.to_dict(), "mps": m.to_dict()}


def _paths(d, pre=()):
    yield pre
    items = d.items() if isinstance(d, dict) else enumerate(d) if isinstance(d, list) else ()
    for k, v in items:
        yield from _paths(v, pre + (k,))


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(list(_paths(_fake_doc()))), value=_JSON)
def test_fuzz_the_fake_state_reader_gives_a_node_or_one_line(path, value):
    """Any one value of a valid fake state file replaced by any JSON value: a node that answers
    every read, or one ParvaError line; never another exception (inf ids crashed it)."""
    import copy

    doc = copy.deepcopy(_fake_doc())
    if path:
        cur = doc
        for k in path[:-1]:
            cur = cur[k]
        cur[path[-1]] = value
    else:
        doc = {"mig": value, "mps": value}
    try:
        b = FakeBackend.from_dict(doc["mig"], "f.json")
        FakeMps.from_dict(doc["mps"], b, "f.json")
        for g in range(b.gpu_count()):
            b.gpu_type(g)
            if b.mig_mode(g)[0]:  # with MIG mode off, listing is the hardware's NotSupported
                b.list_instances(g)
    except ParvaError as exc:
        assert str(exc).startswith("f.json") and "\n" not in str(exc)
