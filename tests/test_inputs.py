"""Input loaders: the seed formats, their quirks, and clear errors naming file and row."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from parvagpu.cli import app
from parvagpu.core.errors import ParvaError
from parvagpu.core.model import ProfilePoint
from parvagpu.planning.heuristic import plan_parva
from parvagpu.planning.request import PlanRequest
from parvagpu.inputs.profiles import load_profile, load_profiles
from parvagpu.inputs.services import load_scenario, load_services
from parvagpu.verify import verify

HEADER = "Mig instance,Batch size,Workload Number,Throughput,Latency"


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_reference_profiles_load_exactly(profiles):
    assert list(profiles) == [
        "bert", "densenet121", "densenet169", "densenet201", "inceptionv3", "mobilenetv2",
        "resnet101", "resnet152", "resnet50", "vgg16", "vgg19",
    ]
    for p in profiles.values():
        assert len(p.points) == 225  # 5 sizes x 9 batches x 5 processes, CRLF, no final newline
    pt = next(p for p in profiles["bert"].points if (p.size, p.batch, p.procs) == (1, 16, 1))
    assert (pt.throughput, pt.latency_s) == (117.569, 0.136)


def test_extra_columns_are_kept(tmp_path):
    p = write(tmp_path, "m.csv", HEADER + ",Latency p99,Mode\n1,1,1,100,0.01,0.012,cpu\n")
    prof = load_profile(p)
    assert prof.points[0].extra == (("Latency p99", "0.012"), ("Mode", "cpu"))


@pytest.mark.parametrize(
    "body,needle",
    [
        ("1,1,1,100\n", "m.csv:2: expected 5 columns, found 4"),
        ("1,1,1,100,abc\n", "m.csv:2: column 'Latency' is not a number"),
        ("1,1,1,-100,0.1\n", "m.csv:2: column 'Throughput' is negative"),
        ("1,1,1,100,0\n", "m.csv:2: throughput and latency must both be 0"),
        ("1,1,1,100,0.1\n1,1,1,90,0.1\n", "m.csv:3: duplicate point"),
        ("0,1,1,100,0.1\n", "m.csv:2: instance size, batch size and workload number must be >= 1"),
        ("1,1,1,nan,0.1\n", "not finite"),
        ("", "profile has no data rows"),
    ],
)
def test_profile_errors_name_file_and_row(tmp_path, body, needle):
    p = write(tmp_path, "m.csv", HEADER + "\n" + body)
    with pytest.raises(ParvaError, match=None) as e:
        load_profile(p)
    assert needle in str(e.value)


def test_profile_dir_errors(tmp_path):
    with pytest.raises(ParvaError, match="no profile CSV files"):
        load_profiles(tmp_path)
    write(tmp_path, "bin.csv", "").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ParvaError, match="bin.csv"):
        load_profiles(tmp_path)


def test_slo_scenarios(example, profiles):
    s1 = load_scenario(example / "SLO", 1, list(profiles))
    assert [s.model for s in s1] == ["bert", "densenet121", "inceptionv3", "mobilenetv2", "resnet50", "vgg19"]
    s5 = {s.model: s for s in load_scenario(example / "SLO", 5, list(profiles))}
    assert s5["densenet169"].latency_ms == 83.5 and s5["densenet169"].rate == 3507
    t5 = {s.model: s for s in load_scenario(example / "SLO", 5, list(profiles), truncate=True)}
    assert t5["densenet169"].latency_ms == 83


def test_slo_errors(tmp_path):
    d = tmp_path / "SLO"
    d.mkdir()
    write(d, "SLO_req_rate.csv", "10,N/A\n")
    write(d, "SLO_latency.csv", "100,50\n")
    with pytest.raises(ParvaError, match="model b: rate and latency must both be N/A"):
        load_scenario(d, 1, ["a", "b"])
    write(d, "SLO_latency.csv", "100,N/A\n100,N/A\n")
    with pytest.raises(ParvaError, match="1 scenarios but SLO_latency.csv has 2"):
        load_scenario(d, 1, ["a", "b"])
    write(d, "SLO_latency.csv", "x,N/A\n")
    with pytest.raises(ParvaError, match=r"SLO_latency.csv:1 \(a\): latency is not a number"):
        load_scenario(d, 1, ["a", "b"])
    write(d, "SLO_latency.csv", "N/A,N/A\n")
    write(d, "SLO_req_rate.csv", "N/A,N/A\n")
    with pytest.raises(ParvaError, match="no services"):
        load_scenario(d, 1, ["a", "b"])


def test_services_file_errors(tmp_path):
    cases = {
        "- {model: a, rate: 1}\n": "missing latency_ms",
        "- {model: a, rate: 1, latency_ms: 5, extra: 1}\n": "unknown keys extra",
        "- {model: a, rate: 1, latency_ms: 5}\n- {model: a, rate: 2, latency_ms: 5}\n": "model listed twice",
        "- {model: a, rate: true, latency_ms: 5}\n": "rate must be a number",
        "{version: v2, services: []}\n": "unsupported version",
        "[]\n": "non-empty list",
        "- {model: a, rate: 1, latency_ms: -5}\n": "latency_ms must be a positive number",
    }
    for text, needle in cases.items():
        with pytest.raises(ParvaError) as e:
            load_services(write(tmp_path, "s.yaml", text))
        assert needle in str(e.value), (text, str(e.value))
        assert "s.yaml" in str(e.value)


FORK = Path(__file__).resolve().parents[2] / "shared" / "reference-data" / "parvagpu_sc24_codetomato_fork"


def test_third_party_fork_data_loads_and_plans(a100):
    """Other models, fractional SLOs, one process only: the loaders cope, and the servable subset
    plans and verifies (several of its SLOs are infeasible for its own profiles)."""
    if not FORK.is_dir():
        pytest.skip("../shared/reference-data/parvagpu_sc24_codetomato_fork is not present")
    profiles = load_profiles(FORK / "prof_data")
    assert len(profiles) == 11
    runner = CliRunner()
    for k in range(1, 6):
        services = load_scenario(FORK / "SLO", k, list(profiles))
        assert any(s.rate < 1 for s in services)  # fractional rates kept
        r = runner.invoke(app, ["plan", "--strategy", "parva", "--profiles", str(FORK / "prof_data"),
                                "--slo", str(FORK / "SLO"), "-s", str(k), "--format", "json"])
        assert r.exit_code == 3 and "no triplet meets" in r.stderr
        r = runner.invoke(app, ["plan", "--strategy", "parva", "--profiles", str(FORK / "prof_data"),
                                "--slo", str(FORK / "SLO"), "-s", str(k), "--format", "json",
                                "--skip-infeasible"])
        assert r.exit_code == 0, r.output
        assert "skipped: model" in r.stderr
    from parvagpu.planning.configurator import split_feasible

    request = PlanRequest(load_scenario(FORK / "SLO", 1, list(profiles)), profiles, a100, 3)
    kept, dropped = split_feasible(request)
    assert len(kept.services) + len(dropped) == 11 and dropped
    plan = plan_parva(kept)
    assert verify(plan, profiles) == []


def test_atomic_write_uses_normal_permissions(tmp_path):
    import os
    import stat

    from parvagpu.fileio.writer import atomic_write

    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "x.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x.json").stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_structured_files_share_one_reader(tmp_path):
    """Services files, models configs, plans and node state: one line naming the file for an
    unreadable, non-UTF-8 or malformed file."""
    from parvagpu.node import read_state
    from parvagpu.contract.plan_json import read_plan
    from parvagpu.serving.workers import read_models

    binary = write(tmp_path, "b.yaml", "")
    binary.write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(ParvaError, match=r"b.yaml: cannot read services file: not UTF-8 text"):
        load_services(binary)
    bad = write(tmp_path, "m.yaml", "tiny: {factory: [x\n")
    with pytest.raises(ParvaError, match=r"m.yaml: invalid YAML at line"):
        read_models(bad)
    with pytest.raises(ParvaError, match=r"state.json: invalid JSON at line 1"):
        read_state(write(tmp_path, "state.json", "{oops"))
    assert read_state(tmp_path / "absent.json") is None
    with pytest.raises(ParvaError, match=r"p.json: cannot read plan"):
        read_plan(tmp_path / "p.json")


# Bodies the bulk parser sees first: it must accept exactly what the row parser accepts, with the
# same points, and leave every error to the row parser (the same message).
BULK_CASES = [
    "1,1,1,100,0.01\n2,4,2,250.5,0.02\n",
    "1,1,1,100,0.01\r\n2,4,2,250.5,0.02",
    " 1 , 1 ,+1, 1e2 , 1E-2 \n",
    "1,1,1,0,0\n1,2,1,10,0.1\n",
    "1,1,1,100\n2,1,1,100,0.1,7\n",  # four then six fields: the same comma count as two good rows
    "1.0,1,1,100,0.01\n",
    "1,1,1,100,0.01\n\n2,1,1,100,0.01\n",
    "1,1,1,inf,0.01\n",
    "1,1,1,0x10,0.01\n",
    "1,1,1,1_0,0.01\n",
    "1_0,1,1,10,0.01\n",
    "1,1,1,100,0.01\n1,1,1,90,0.02\n",
    "200,1,1,100,0.01\n",
    "1,1,1,100,-0.01\n",
    "1,1,1,,0.01\n",
    '1,1,1,"100",0.01\n',
    "99999999999999999999,1,1,100,0.01\n",
]


@pytest.mark.parametrize("body", BULK_CASES)
def test_bulk_parser_agrees_with_row_parser(tmp_path, body):
    from parvagpu.inputs.profiles import _parse_rows

    good = write(tmp_path, "a.csv", HEADER + "\n1,1,1,50,0.02\n")
    p = write(tmp_path, "m.csv", HEADER + "\n" + body)
    try:
        want = _parse_rows(p, "m", p.read_text(encoding="utf-8-sig"))
    except ParvaError as exc:
        want = str(exc)
    try:
        got = load_profiles(tmp_path)
    except ParvaError as exc:
        assert str(exc) == want
        return
    assert got["m"].points == want.points and got["a"].points == load_profile(good).points


def test_plain_files_are_parsed_in_bulk(tmp_path):
    for i, body in enumerate(BULK_CASES[:4]):
        write(tmp_path, f"m{i}.csv", HEADER + "\n" + body)
    write(tmp_path, "x.csv", HEADER + ",Mode\n1,1,1,100,0.01,cpu\n")
    profiles = load_profiles(tmp_path)
    assert [p._points is None for p in profiles.values()] == [True] * 4 + [False]  # columns only
    assert profiles["m2"].points[0] == ProfilePoint(1, 1, 1, 100.0, 0.01)
