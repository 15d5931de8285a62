"""GPU types as data: placement tables, layouts, packing."""

from __future__ import annotations

from itertools import combinations_with_replacement

import pytest

from parvagpu.core.gpus import GPU_TYPES, gpu_type
from parvagpu.core.errors import ParvaError


def _count_vector(layout, sizes):
    return tuple(sum(1 for s, _ in layout if s == size) for size in sizes)


def test_a100_layouts_match_reference_counts(a100):
    """mig-mps-kubernetes.md §3.2: 37 distinct size multisets, 12 maximal (11 full + 3g+3g)."""
    vectors = {_count_vector(lay, a100.sizes) for lay in a100.layouts()}
    assert len(vectors) == 37

    def dominated(v):
        return any(w != v and all(a <= b for a, b in zip(v, w)) for w in vectors)

    maximal = {v for v in vectors if not dominated(v)}
    assert len(maximal) == 12
    assert (0, 0, 2, 0, 0) in maximal  # 3g + 3g


@pytest.mark.parametrize("name", sorted(GPU_TYPES))
def test_pack_gives_legal_non_overlapping_placements(name):
    gpu = GPU_TYPES[name]
    realizable = {tuple(sorted(s for s, _ in lay)) for lay in gpu.layouts()}
    for k in range(1, gpu.compute_slices + 1):
        for sizes in combinations_with_replacement(gpu.sizes, k):
            packed = gpu.pack(sizes)
            assert (packed is not None) == (tuple(sorted(sizes)) in realizable)
            if packed is None:
                continue
            used = 0
            for size, start in packed:
                assert gpu.legal(size, start)
                assert not used & gpu.mask(size, start)
                used |= gpu.mask(size, start)


def test_known_geometry_facts(a100):
    assert a100.realizable((3, 2, 1, 1))
    assert a100.realizable((4, 3))
    assert not a100.realizable((4, 4))
    assert not a100.realizable((7, 1))
    assert a100.profile(3).starts == (0, 4)
    assert a100.profile(3).memory_slices == 4
    assert a100.profile(7).name == "7g.80gb" and a100.profile(7).profile_id == 0
    a30 = gpu_type("a30")
    assert a30.sizes == (1, 2, 4) and a30.compute_slices == 4
    assert gpu_type("H200").profile(1).name == "1g.18gb"


def test_unknown_gpu_type():
    with pytest.raises(ParvaError, match="unknown GPU type"):
        gpu_type("V100")


def test_catalog_has_the_documented_variants():
    """NVIDIA's MIG tables: names follow each product's memory; the geometry is the 7/8-slice one."""
    names = {
        "H100-94GB": ("1g.12gb", "2g.24gb", "3g.47gb", "4g.47gb", "7g.94gb", "1g.12gb+me", "1g.24gb"),
        "H100-96GB": ("1g.12gb", "2g.24gb", "3g.48gb", "4g.48gb", "7g.96gb", "1g.12gb+me", "1g.24gb"),
        "H20": ("1g.12gb", "2g.24gb", "3g.48gb", "4g.48gb", "7g.96gb", "1g.12gb+me", "1g.24gb"),
        "B200": ("1g.23gb", "2g.45gb", "3g.90gb", "4g.90gb", "7g.180gb", "1g.23gb+me", "1g.45gb"),
        "A30": ("1g.6gb", "2g.12gb", "4g.24gb", "1g.6gb+me", "2g.12gb+me"),
    }
    for name, profiles in names.items():
        t = gpu_type(name)
        assert tuple(p.name for p in t.all_profiles) == profiles
    b200 = gpu_type("B200")
    assert b200.sizes == (1, 2, 3, 4, 7) and b200.profile(3).starts == (0, 4)
    assert b200.profile_by_id(15).memory_slices == 2 and b200.profile_by_id(15).starts == (0, 2, 4, 6)
    assert b200.profile_by_id(20).media and b200.profile_by_id(20).max_count == 1
    # Planning uses one profile per size; the extras are never in `profiles`.
    for t in GPU_TYPES.values():
        assert len({p.size for p in t.profiles}) == len(t.profiles)
        assert not set(t.profiles) & set(t.extra_profiles)
        assert len({p.profile_id for p in t.all_profiles}) == len(t.all_profiles)


def test_fake_accepts_extra_profiles_and_enforces_their_limits():
    from parvagpu.hardware.mig import FakeBackend, InsufficientResources, InvalidArgument

    fake = FakeBackend("H100-94GB", 1)
    fake.create_gpu_instance(0, 20, 0)  # 1g.12gb+me
    with pytest.raises(InsufficientResources, match="at most 1"):
        fake.create_gpu_instance(0, 20, 1)
    with pytest.raises(InvalidArgument):
        fake.create_gpu_instance(0, 15, 1)  # 1g.24gb starts on even slots only
    with pytest.raises(InsufficientResources, match="overlaps"):
        fake.create_gpu_instance(0, 15, 0)  # two memory slices: overlaps the +me at 0
    fake.create_gpu_instance(0, 15, 2)
    assert [(i.profile_id, i.start, i.width) for i in fake.list_instances(0)] == [(20, 0, 1), (15, 2, 2)]


def test_gpus_json_lists_every_type_and_profile():
    import json

    from typer.testing import CliRunner

    from parvagpu.cli import app

    res = CliRunner().invoke(app, ["gpus", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert [g["name"] for g in data["gpus"]] == list(GPU_TYPES)
    h200 = next(g for g in data["gpus"] if g["name"] == "H200")
    me = next(p for p in h200["profiles"] if p["name"] == "1g.18gb+me")
    assert me == {"name": "1g.18gb+me", "id": 20, "size": 1, "memory_slices": 1, "starts": [0, 1, 2, 3, 4, 5, 6],
                  "memory_mib": 18432, "sms": 16, "max_count": 1, "planned": False}
    assert sum(p["planned"] for p in h200["profiles"]) == 5
