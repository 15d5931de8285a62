"""Two Ray nodes on this machine (a head and a second `ray start --address`, both on loopback, the
second with its own `parvagpu_node_1` resource) serve a two-node plan under open-loop load, and the
second node's raylet is killed mid-load: the surviving node's model keeps being answered, the dead
node's segments' requests fail over to the model's other segment or get a prompt 503, and every
request ends as a 200 or a 503 (none failed, none timed out, none lost). Skipped like the other Ray end-to-end tests."""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.request

import pytest

from ray_cluster import ray_module  # noqa: E402

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # before Ray is imported
ray = ray_module("aiohttp", "psutil")

from parvagpu.core.model import DeploymentMap, PlacedSegment, Segment, Service, Triplet  # noqa: E402
from parvagpu.serving.loadgen import Target, load_http  # noqa: E402
from parvagpu.serving.pinning import Pin, node_resource  # noqa: E402
from parvagpu.serving.policy import serving_spec  # noqa: E402
from parvagpu.serving.workers import parse_models  # noqa: E402

from ray_cluster import COMMON, Node, free_port, head_args, listening, make_auth_token, wait_for  # noqa: E402

pytestmark = pytest.mark.slow

# One GPU per node, so GPU 0 is node 0 and GPU 1 is node 1. "keep" lives on node 0 only, "both" on
# either node, "gone" on node 1 only. Sleeping models: a known service time far above what the
# offered rates need, so anything but 200 comes from the node loss, not from overload.
PLAN = DeploymentMap(
    "A100-80GB", "parva", 3, 1,
    (
        PlacedSegment(Segment("keep", Triplet(1, 2, 1, 100.0, 10.0)), 0, 0),
        PlacedSegment(Segment("both", Triplet(1, 2, 1, 100.0, 10.0)), 0, 1),
        PlacedSegment(Segment("both", Triplet(1, 2, 1, 100.0, 10.0)), 1, 0),
        PlacedSegment(Segment("gone", Triplet(1, 2, 1, 100.0, 10.0)), 1, 1),
    ),
    (Service("keep", 15.0, 300.0), Service("both", 15.0, 300.0), Service("gone", 10.0, 300.0)),
)
SLEEPY = {"factory": "parvagpu.serving.workers:sleep_model", "args": {"ms_per_batch": 10},
          "inputs": [{"name": "x", "datatype": "FP32", "shape": [4]}],
          "outputs": [{"name": "sum", "datatype": "FP32", "shape": [1]}]}
MODELS = parse_models({m: SLEEPY for m in ("keep", "both", "gone")})
# The head's GCS declares a silent node dead after 3 missed 1-s health checks (Ray's default: 5 of
# 3 s), so the test waits less for what Ray decides; the ingress does not depend on it.
HEALTH_CHECK = {"RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "1000",
                "RAY_health_check_failure_threshold": "3"}
LOAD_S, KILL_AT_S, CLIENT_TIMEOUT_S = 9.0, 3.0, 8.0  # the ingress gives a call up after 5 s (504)


def _alive_nodes() -> list[dict]:
    return [n for n in ray.nodes() if n["Alive"]]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head (parvagpu_node_0) and a second node (parvagpu_node_1) on loopback, the driver joined;
    both nodes always stopped."""
    from ray._private import services

    tmp = tmp_path_factory.mktemp("ray2")
    gcs = free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"}
    nodes: list[Node] = []
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE",)}
    mp = pytest.MonkeyPatch()
    make_auth_token(env)
    try:
        nodes.append(Node(head_args(tmp, gcs, '{"%s": 1}' % node_resource(0)),
                          {**env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", **HEALTH_CHECK}, tmp / "head.log"))
        wait_for("the head's GCS", lambda: listening(gcs), 60, nodes)
        nodes.append(Node([
            f"--address=127.0.0.1:{gcs}", f"--dashboard-agent-listen-port={free_port()}",
            "--min-worker-port=21200", "--max-worker-port=21399",
            '--resources={"%s": 1}' % node_resource(1), *COMMON,
        ], env, tmp / "node1.log"))
        _driver_token_auth()
        _resolve = services.resolve_ip_for_localhost
        mp.setattr(services, "resolve_ip_for_localhost", lambda h: h if services.is_localhost(h) else _resolve(h))
        ray.init(address=f"127.0.0.1:{gcs}", _node_ip_address="127.0.0.1", logging_level="WARNING",
                 log_to_driver=False)
        wait_for("two live nodes", lambda: len(_alive_nodes()) == 2, 90, nodes)
        yield nodes
    finally:
        try:
            from ray import serve

            if ray.is_initialized():
                serve.shutdown()
        except Exception:
            pass
        ray.shutdown()
        for n in reversed(nodes):
            n.stop()
        mp.undo()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _driver_token_auth() -> None:
    """This process speaks token authentication too (Ray reads the mode once, when first imported)."""
    os.environ["RAY_AUTH_MODE"] = "token"
    try:
        from ray._private.authentication.authentication_token_setup import _enable_token_auth
    except ImportError:
        return
    _enable_token_auth()


def _pins() -> dict[str, Pin]:
    spec = serving_spec(PLAN, depth=4)
    return {s.name: Pin((), ((node_resource(s.node), 0.001),)) for ms in spec.values() for s in ms.segments}


def test_losing_a_node_mid_load_fails_over_or_503s_and_loses_nothing(cluster):
    from parvagpu.serving.app import serve_app

    port = free_port()
    spec = serving_spec(PLAN, depth=4)
    serve_app(spec, MODELS, _pins(), port=port, address="auto")
    url = f"http://127.0.0.1:{port}"
    out: dict = {}
    targets = [Target(s.model, s.rate, s.latency_ms) for s in PLAN.services]

    def run():
        out["res"] = load_http(url, targets, duration_s=LOAD_S, seed=7, timeout_s=CLIENT_TIMEOUT_S, synthetic=True)

    t = threading.Thread(target=run)
    t0 = time.monotonic()
    t.start()
    time.sleep(KILL_AT_S)
    cluster[1].raylet().kill()  # SIGKILL: the node is gone, its workers follow
    killed_at = time.monotonic() - t0
    t.join(timeout=LOAD_S + CLIENT_TIMEOUT_S + 30)
    assert not t.is_alive()
    res = out["res"]
    stats = {s.model: s for s in res.stats}
    with urllib.request.urlopen(f"{url}/v1/stats", timeout=30) as r:
        served = json.load(r)
    for s in stats.values():  # every request ends as 200 or 503: never an error, never a timeout
        assert s.lost == 0 and s.timeouts == 0 and s.failed == 0, s
        assert s.ok + s.rejected == s.sent
    keep, both, gone = stats["keep"], stats["both"], stats["gone"]
    assert keep.ok >= 0.9 * keep.sent  # the surviving node's model is untouched (a 503 only if the CPU stalls)
    # Requests that reached node 1's segments before the ingress knew are held by Ray Serve (no
    # replica answers) or fail with an actor error. A held call past its SLO has the segment
    # probed; once a probe fails (or a call fails and the probe after it does), every call held
    # there moves to node 0 ("both") or, where no other segment has room, gets 503 ("gone", and
    # "both" while its node-0 segment is full): not a 502, nor a 504 after the 5-s call timeout.
    # From then on node 1's segments are down and their model's requests go to node 0 or get 503.
    assert both.ok >= 0.85 * both.sent
    assert gone.rejected > 0 and gone.ok > 0.2 * gone.sent
    assert {m: v["down"] for m, v in served.items()} == {"keep": [], "both": ["both-n1-g0-s0"], "gone": ["gone-n1-g0-s1"]}
    print(f"killed at {killed_at:.1f} s; " + "; ".join(
        f"{m}: sent {s.sent} ok {s.ok} 503 {s.rejected} failed {s.failed}" for m, s in stats.items()))
