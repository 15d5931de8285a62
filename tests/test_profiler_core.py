"""The profiler's pure parts: grid, skip rules, aggregation, number format, CSV round trip, and
input parsing. No torch needed."""

from __future__ import annotations

import pytest

from parvagpu.core.errors import ParvaError
from parvagpu.profiler.devices import thread_percentage
from parvagpu.profiler.results import (
    ERROR,
    HEADER,
    OK,
    OOM,
    SKIPPED_LATENCY,
    SKIPPED_OOM,
    Point,
    Result,
    WorkerTiming,
    aggregate,
    classify_error,
    fmt_number,
    grid,
    parse_csv,
    percentile,
    skip_reason,
    to_csv,
    todo,
)
from parvagpu.profiler.spec import (
    Mode,
    Settings,
    check_name,
    check_sizes,
    parse_ints,
    parse_model,
    parse_shape,
)
from parvagpu.inputs.profiles import SEED_COLUMNS, load_profile


def ok(s, b, p, thr=100.0, lat=0.01):
    return Result(Point(s, b, p), OK, thr, lat, lat * 1.5, 12.0, "cpu")


def test_grid_is_seed_order_without_duplicates():
    pts = grid([2, 1, 2], [4, 1], [2, 1])
    assert pts == [
        Point(1, 1, 1), Point(1, 1, 2), Point(1, 4, 1), Point(1, 4, 2),
        Point(2, 1, 1), Point(2, 1, 2), Point(2, 4, 1), Point(2, 4, 2),
    ]


def test_skip_after_oom_only_for_larger_batches_of_same_size_and_procs():
    done = {Point(1, 4, 2): Result(Point(1, 4, 2), OOM)}
    assert skip_reason(Point(1, 8, 2), done, None) == SKIPPED_OOM
    assert skip_reason(Point(1, 2, 2), done, None) is None  # smaller batch
    assert skip_reason(Point(1, 8, 1), done, None) is None  # other procs
    assert skip_reason(Point(2, 8, 2), done, None) is None  # other size
    # A skipped point propagates the rule to still larger batches.
    done[Point(1, 8, 2)] = Result(Point(1, 8, 2), SKIPPED_OOM)
    assert skip_reason(Point(1, 16, 2), done, None) == SKIPPED_OOM


def test_skip_after_latency_above_max():
    done = {Point(1, 1, 1): ok(1, 1, 1, lat=0.02), Point(1, 2, 1): ok(1, 2, 1, lat=0.05)}
    assert skip_reason(Point(1, 4, 1), done, None) is None  # no cut without --max-latency
    assert skip_reason(Point(1, 4, 1), done, 0.1) is None
    assert skip_reason(Point(1, 4, 1), done, 0.04) == SKIPPED_LATENCY
    assert skip_reason(Point(1, 2, 1), done, 0.01) == SKIPPED_LATENCY  # batch 1 was already too slow
    assert skip_reason(Point(1, 1, 1), {}, 0.001) is None  # batch 1 itself is always measured
    # An error is not a reason to skip: a larger batch may still run.
    assert skip_reason(Point(1, 4, 1), {Point(1, 2, 1): Result(Point(1, 2, 1), ERROR)}, 0.001) is None


def test_todo_keeps_done_points_and_retries_errors_on_request():
    pts = grid([1], [1, 2, 4], [1])
    done = {Point(1, 1, 1): ok(1, 1, 1), Point(1, 2, 1): Result(Point(1, 2, 1), ERROR)}
    assert todo(pts, done) == [Point(1, 4, 1)]
    assert todo(pts, done, retry_errors=True) == [Point(1, 2, 1), Point(1, 4, 1)]


def test_percentile_is_nearest_rank():
    vals = list(range(1, 101))
    assert percentile(vals, 99) == 99
    assert percentile(vals, 100) == 100
    assert percentile([5.0], 99) == 5.0
    assert percentile([3, 1, 2], 50) == 2
    with pytest.raises(ValueError):
        percentile([], 99)


def test_aggregate_per_process_throughput_and_pooled_latency():
    p = Point(2, 4, 2)
    a = WorkerTiming(items=400, wall_s=2.0, latencies=[0.01] * 99 + [0.5], memory_mib=100)
    b = WorkerTiming(items=200, wall_s=2.0, latencies=[0.02] * 50, memory_mib=120)
    r = aggregate(p, [a, b], "cpu")
    assert r.status == OK and r.mode == "cpu"
    assert r.throughput == pytest.approx((200 + 100) / 2)  # mean of per-process items/s
    assert r.latency_s == pytest.approx((0.99 + 0.5 + 1.0) / 150)
    assert r.p99_s == 0.02  # rank ceil(0.99*150)=149 of the pooled, sorted timings
    assert r.memory_mib == 120
    with pytest.raises(ValueError):
        aggregate(p, [a], "cpu")
    assert aggregate(Point(1, 1, 1), [WorkerTiming(0, 0.0, [])]).status == ERROR


def test_classify_error_recognises_oom_wordings():
    assert classify_error("OutOfMemoryError", "CUDA out of memory. Tried to allocate 2.00 GiB") == OOM
    assert classify_error("RuntimeError", "DefaultCPUAllocator: can't allocate memory: you tried") == OOM
    assert classify_error("Fail", "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory") == OOM
    assert classify_error("MemoryError", "") == OOM
    assert classify_error("RuntimeError", "mat1 and mat2 shapes cannot be multiplied") == ERROR


@pytest.mark.parametrize(
    "x, text",
    [(0.0, "0"), (0.047, "0.047"), (117.569, "117.569"), (0.000277197, "0.000277197"),
     (12345.6789, "12345.679"), (2.5e-06, "0.0000025"), (1.0, "1"), (1234567.891, "1234567.891")],
)
def test_fmt_number_positional_and_never_rounds_to_zero(x, text):
    assert fmt_number(x) == text
    assert "e" not in fmt_number(x)


def test_csv_round_trip_loads_with_the_planner_loader(tmp_path):
    results = [
        ok(2, 1, 1, 900.5, 0.0011),
        ok(1, 4, 2, 3000.25, 0.0000123),
        Result(Point(1, 8, 2), OOM, mode="cpu", detail="boom"),
        Result(Point(1, 16, 2), SKIPPED_OOM, mode="cpu"),
        ok(1, 1, 1),
    ]
    text = to_csv(results)
    lines = text.splitlines()
    assert tuple(lines[0].split(",")) == HEADER and HEADER[:5] == SEED_COLUMNS
    assert [line.split(",")[:3] for line in lines[1:]] == [
        ["1", "1", "1"], ["1", "4", "2"], ["1", "8", "2"], ["1", "16", "2"], ["2", "1", "1"]
    ]
    assert lines[3] == "1,8,2,0,0,0,,cpu,oom"
    f = tmp_path / "m.csv"
    f.write_text(text)
    prof = load_profile(f)
    assert [(p.size, p.batch, p.procs) for p in prof.points] == [(1, 1, 1), (1, 4, 2), (1, 8, 2), (1, 16, 2), (2, 1, 1)]
    assert prof.points[1].throughput == 3000.25 and prof.points[1].latency_s == 0.0000123
    assert not prof.points[2].runnable
    back, torn = parse_csv(text, "m.csv")
    assert not torn
    assert back[Point(1, 4, 2)].latency_s == 0.0000123
    assert back[Point(1, 8, 2)].status == OOM


def test_parse_csv_drops_a_torn_last_line_only():
    text = to_csv([ok(1, 1, 1), ok(1, 2, 1)])
    torn = text[: text.rindex("\n", 0, len(text) - 1) + 8]  # cut inside the last row
    back, dropped = parse_csv(torn, "m.csv")
    assert dropped and list(back) == [Point(1, 1, 1)]
    lines = text.splitlines()
    broken_middle = "\n".join([lines[0], lines[1][:5], lines[2]]) + "\n"
    with pytest.raises(ParvaError, match=r"m.csv:2"):
        parse_csv(broken_middle, "m.csv")
    assert parse_csv("", "m.csv") == ({}, False)


def test_parse_csv_refuses_a_foreign_file():
    with pytest.raises(ParvaError, match="not a profile written by"):
        parse_csv("Mig instance,Batch size,Workload Number,Throughput,Latency\n1,1,1,10,0.1\n", "x.csv")


def test_parse_model_kinds(tmp_path):
    spec = parse_model("parvagpu.profiler.zoo:tiny_cnn", "3,32,32")
    assert (spec.kind, spec.shape, spec.default_name, spec.framework) == ("factory", (3, 32, 32), "tiny_cnn", "torch")
    assert parse_model("pkg.mod:fn", None).shape == ()
    onnx = tmp_path / "net.onnx"
    onnx.write_bytes(b"x")
    assert parse_model(str(onnx), "8").kind == "onnx" and parse_model(str(onnx), "8").framework == "onnxruntime"
    ts = tmp_path / "net.pt"
    ts.write_bytes(b"x")
    assert parse_model(str(ts), "8").kind == "torchscript"
    assert parse_model(str(ts), "8").default_name == "net"


@pytest.mark.parametrize(
    "ref, shape, message",
    [
        ("missing.onnx", "3", "file not found"),
        ("nope.pt", "3", "file not found"),
        ("not a model", "3", "expected package.module:function"),
        ("pkg.mod:fn", "3,x", "not a positive integer"),
        ("pkg.mod:fn", "3,0", "not a positive integer"),
        ("pkg.mod:fn", "", "comma-separated positive integers"),
        ("pkg.mod:fn", "3,,4", "comma-separated positive integers"),
    ],
)
def test_parse_model_errors(ref, shape, message):
    with pytest.raises(ParvaError, match=message):
        parse_model(ref, shape)


def test_parse_model_dtype_and_shape_forms():
    with pytest.raises(ParvaError, match="--dtype"):
        parse_model("a:b", "3", "float64")
    assert parse_shape("3, 224,224") == (3, 224, 224)
    assert parse_shape(" 64 ") == (64,)


def test_parse_ints_and_names_and_settings():
    assert parse_ints("4,1,2,1", "--batches") == (1, 2, 4)
    for bad in ("1,a", "0", "", "-1", "1.5", "\u00b2", "\u0663", "1e9", str(2**20 + 1), "9" * 40):
        with pytest.raises(ParvaError, match="--batches"):
            parse_ints(bad, "--batches")
    assert check_name("resnet50") == "resnet50"
    for bad in ("a/b", "", "../x", "m.meta"):
        with pytest.raises(ParvaError, match="--name"):
            check_name(bad)
    for bad in (0, float("inf"), float("nan"), 1e9):
        with pytest.raises(ParvaError, match="--duration"):
            Settings(duration_s=bad)
    with pytest.raises(ParvaError, match="--timeout"):
        Settings(timeout_s=float("inf"))
    with pytest.raises(ParvaError, match="--warmup"):
        Settings(warmup=-1)
    with pytest.raises(ParvaError, match="--max-latency"):
        Settings(max_latency_s=0)
    with pytest.raises(ParvaError, match="mps-share"):
        check_sizes(Mode.mps_share, (1, 8))
    check_sizes(Mode.cpu, (1, 16))


def test_thread_percentage_stands_for_size_over_seven():
    assert [thread_percentage(s) for s in (1, 2, 3, 4, 7)] == [14, 29, 43, 57, 100]
    assert thread_percentage(1, 4) == 25


def test_core_imports_without_torch():
    """`import parvagpu` and the profiler's pure modules must not pull torch in."""
    import subprocess
    import sys

    code = (
        "import sys, parvagpu.cli, parvagpu.profiler, parvagpu.profiler.session;"
        "bad = [m for m in ('torch', 'onnxruntime') if m in sys.modules];"
        "sys.exit(1 if bad else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
