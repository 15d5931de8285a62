"""The one safe writer, through the real command line: only regular files or new paths are
written, a symlink is written through to its existing target, several outputs are all or none,
and a failed command leaves nothing new behind."""

from __future__ import annotations

import os
import stat

import pytest
from typer.testing import CliRunner

from parvagpu.cli import app
from parvagpu.core.errors import ParvaError
from parvagpu.fileio.writer import atomic_write, write_all

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_error(r, code=2) -> str:
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.exit_code == code and len(lines) == 1 and lines[0].startswith("error: "), r.output
    assert "Traceback" not in r.output
    return lines[0]


def _fifo(tmp_path):
    path = tmp_path / "pipe.json"
    os.mkfifo(path)
    return path


def _socket(tmp_path):
    import socket

    path = tmp_path / "sock.json"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()
    return path


SPECIAL = {
    "FIFO": (_fifo, "is a FIFO", stat.S_ISFIFO),
    "socket": (_socket, "is a socket", stat.S_ISSOCK),
    "directory": (lambda t: (t / "d.json").mkdir() or t / "d.json", "is a directory", stat.S_ISDIR),
    "symlink to a FIFO": (lambda t: os.symlink(_fifo(t), t / "ln.json") or t / "ln.json", "is a FIFO", stat.S_ISFIFO),
}


@pytest.mark.parametrize("kind", list(SPECIAL))
def test_plan_out_never_replaces_a_special_file(tmp_path, kind):
    make, needle, still = SPECIAL[kind]
    target = make(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    line = one_error(run("plan", "--scenario", 1, "--strategy", "parva", "--out", target))
    assert needle in line
    assert still(os.stat(target).st_mode)  # not turned into a regular file
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no temporary left behind


@pytest.mark.parametrize("device", ["/dev/null", "/dev/full"])
def test_json_out_refuses_a_device(tmp_path, device):
    """The check happens before any temporary file is made; the device is only stat-ed."""
    if not os.path.exists(device):
        pytest.skip(f"{device} is absent")
    r = run("simulate", "--scenario", 1, "--duration", 0.2, "--json", device)
    assert r.exit_code == 2 and "is a character device" in r.stderr and "Traceback" not in r.output, r.output
    assert stat.S_ISCHR(os.stat(device).st_mode)


def test_a_symlink_is_written_through_to_its_target(tmp_path):
    target = tmp_path / "real.json"
    target.write_text("old\n")
    target.chmod(0o640)
    link = tmp_path / "link.json"
    link.symlink_to(target)
    r = run("plan", "--scenario", 1, "--strategy", "parva", "--out", link)
    assert r.exit_code == 0, r.output
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_text().startswith("{")
    assert stat.S_IMODE(target.stat().st_mode) == 0o640  # the replaced file keeps its permissions
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.json", "real.json"]


def test_a_dangling_symlink_is_refused(tmp_path):
    link = tmp_path / "link.json"
    link.symlink_to(tmp_path / "elsewhere.json")
    line = one_error(run("plan", "--scenario", 1, "--strategy", "parva", "--out", link))
    assert "does not exist; refusing to write through it" in line
    assert not (tmp_path / "elsewhere.json").exists() and link.is_symlink()


def test_missing_directory_is_one_line_and_nothing_made(tmp_path):
    line = one_error(run("plan", "--scenario", 1, "--strategy", "parva", "--out", tmp_path / "no" / "p.json"))
    assert "does not exist" in line and list(tmp_path.iterdir()) == []


def test_several_files_are_all_or_none(tmp_path, monkeypatch):
    """The second rename fails: the first file gets its old content back, the new one is gone."""
    old = tmp_path / "a.txt"
    old.write_text("old a\n")
    real_replace = os.replace
    calls = []

    def failing(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr("parvagpu.fileio.writer.os.replace", failing)
    with pytest.raises(ParvaError, match="No space left on device"):
        write_all({old: "new a\n", tmp_path / "b.txt": "new b\n"})
    monkeypatch.setattr("parvagpu.fileio.writer.os.replace", real_replace)
    assert old.read_text() == "old a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_a_special_file_among_several_stops_all_before_anything_is_written(tmp_path):
    fifo = _fifo(tmp_path)
    with pytest.raises(ParvaError, match="is a FIFO"):
        write_all({tmp_path / "a.txt": "a", fifo: "b"}, create_dir=None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe.json"]


def test_a_created_output_directory_is_removed_on_failure(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ParvaError):
        write_all({out / "a.txt": "a", out / "sub" / "b.txt": "b"}, create_dir=out)
    assert list(tmp_path.iterdir()) == []


def test_new_files_get_the_umask_permissions(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write(tmp_path / "x.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x.txt").stat().st_mode) == 0o640


def test_compare_out_writes_all_or_nothing(tmp_path):
    """A figure that cannot be written (a FIFO in its place) leaves no compare.csv behind."""
    pytest.importorskip("matplotlib")
    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / "gpus.svg")
    r = run("compare", "--scenario", 1, "--strategies", "parva", "--out", out)
    assert r.exit_code == 2 and "is a FIFO" in r.stderr and "Traceback" not in r.output, r.output
    assert sorted(p.name for p in out.iterdir()) == ["gpus.svg"]


def test_user_text_is_printed_as_written(tmp_path, example):
    """Model names and paths with Rich markup are shown literally, in tables and in errors."""
    profiles = tmp_path / "[bold]p[i]"
    profiles.mkdir()
    (profiles / "[red]m.csv").write_text((example / "profiles" / "vgg16.csv").read_text())
    services = tmp_path / "s.yaml"
    services.write_text('- {model: "[red]m", rate: 50, latency_ms: 200}\n')
    r = run("plan", "--profiles", profiles, "--services", services, "--strategy", "parva", "--format", "table")
    assert r.exit_code == 0, r.output
    assert "[red]m" in r.stdout
    r = run("plan", "--profiles", profiles, "--services", tmp_path / "[/]missing.yaml")
    assert r.exit_code == 2 and "[/]missing.yaml" in r.stderr and "Traceback" not in r.output, r.output


def test_simulate_writes_its_json_and_plot_together_or_neither(tmp_path):
    """A plot that cannot be written (a FIFO in its place) leaves no JSON behind either."""
    pytest.importorskip("matplotlib")
    fifo = tmp_path / "cdf.png"
    os.mkfifo(fifo)
    out = CliRunner().invoke(app, ["simulate", "--scenario", "1", "--duration", "2",
                                   "--json", str(tmp_path / "sim.json"), "--plot", str(fifo)])
    assert out.exit_code == 2, out.output
    assert not (tmp_path / "sim.json").exists()
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
