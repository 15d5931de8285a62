"""`apply NEW --node K` for a plan made with --current: the node follows the make-before-break
transition on the fake backend, ends in the plan's layout, and rolls back on a failure."""

from __future__ import annotations

import pytest
from apply_support import applied, layout, node_picture, wanted, write_plan
from typer.testing import CliRunner

from parvagpu.cli import app
from parvagpu.cli.common import load_inputs
from parvagpu.cli.node import transition_order
from parvagpu.core.errors import ParvaError
from parvagpu.core.gpus import gpu_type
from parvagpu.node import Op, apply_plan
from parvagpu.planning.request import PlanRequest
from parvagpu.planning.strategies import plan as make_plan


@pytest.fixture(scope="module")
def moved():
    """Scenario 3 running on one node, then re-planned for scenario 2 with --current (some segments move)."""
    profiles, s3 = load_inputs(None, None, 3, None, False)
    _, s2 = load_inputs(None, None, 2, None, False)
    a100 = gpu_type("A100-80GB")
    old = make_plan(PlanRequest(s3, profiles, a100, 3, 8), "parva")
    new = make_plan(PlanRequest(s2, profiles, a100, 3, 8, time_limit=2.0, current=old), "auto")
    assert old.gpus_used <= 8 and new.gpus_used <= 8 and new.transition.changed > 0
    return old, new


def _key(step):
    kind = "create" if step.op in (Op.CREATE_GI, Op.CREATE_CI, Op.START_MPS, Op.BIND) else "remove"
    return (kind, step.gpu, step.start)


def test_apply_follows_the_transition_and_ends_in_the_plan(moved, tmp_path):
    old, new = moved
    fake, mps, dirs = applied(old, 0, tmp_path)
    order = transition_order(new, 0)
    result = apply_plan(new, 0, fake, mps, dirs, order=order)
    assert layout(fake) == wanted(new, 0)
    seen = list(dict.fromkeys(_key(s) for s in result.steps))
    named = [k for k in seen if k in set(order)]
    assert named == [k for k in dict.fromkeys(order) if k in set(named)]  # the transition's order
    # Without the transition, diff tears a GPU down before creating on it: another order.
    fake2, mps2, dirs2 = applied(old, 0, tmp_path / "plain")
    plain = apply_plan(new, 0, fake2, mps2, dirs2, dry_run=True).steps
    assert sorted(map(repr, plain)) == sorted(map(repr, result.steps)) and plain != result.steps
    creates = [i for i, s in enumerate(result.steps) if s.op is Op.CREATE_GI]
    destroys = [i for i, s in enumerate(result.steps) if s.op is Op.DESTROY_GI]
    assert creates[0] < destroys[-1]  # creations interleave with removals, as the transition says


def test_a_failure_in_transition_order_rolls_back(moved, tmp_path):
    old, new = moved
    fake, mps, dirs = applied(old, 0, tmp_path)
    before = node_picture(fake, mps)
    order = transition_order(new, 0)
    fake.fail_at(3, "create_gpu_instance")  # part-way through: after removals and creations
    with pytest.raises(ParvaError, match="as it was"):
        apply_plan(new, 0, fake, mps, dirs, order=order)
    assert node_picture(fake, mps) == before


def test_apply_cli_with_a_transition(moved, tmp_path):
    old, new = moved
    runner = CliRunner()
    state = tmp_path / "fake.json"
    args = ["--backend", "fake", "--fake-state", str(state), "--state-dir", str(tmp_path / "st")]
    assert runner.invoke(app, ["apply", str(write_plan(old, tmp_path / "old.json")), "--node", "0", *args]).exit_code == 0
    out = runner.invoke(app, ["apply", str(write_plan(new, tmp_path / "new.json")), "--node", "0", *args])
    assert out.exit_code == 0, out.output
    again = runner.invoke(app, ["apply", str(tmp_path / "new.json"), "--node", "0", *args])
    assert "nothing to do" in again.output
