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
