import json
import math
import os
import subprocess
import sys

import pytest

from hf_clusterable.utils import io
from hf_clusterable.utils.io import atomic_write, check_output_file, json_text


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_atomic_write_syncs_the_file_and_its_folder(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append(os.path.realpath(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else fd)
        real_fsync(fd)

    monkeypatch.setattr(io.os, "fsync", recording_fsync)
    atomic_write(tmp_path / "a.json", "{}")
    assert (tmp_path / "a.json").read_text() == "{}"
    assert len(synced) == 2  # the data before the rename, the folder entry after it
    if os.path.exists("/proc/self/fd"):
        assert synced[1] == str(tmp_path)


def test_orphans_of_killed_writes_are_removed_by_the_next_write(tmp_path):
    orphan = tmp_path / f".cluster_metrics.json.hfc-{dead_pid()}-abc123.tmp"
    orphan.write_text("half")
    live = tmp_path / f".cluster_metrics.json.hfc-{os.getppid()}-def456.tmp"  # a writer that is still running
    live.write_text("in progress")
    foreign = tmp_path / ".model.safetensors.tmp"  # not ours: never touched
    foreign.write_text("x")
    atomic_write(tmp_path / "README.md", "card")
    assert not orphan.exists()
    assert live.exists() and foreign.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["README.md", live.name, foreign.name])


def test_a_failed_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    def boom(*args):
        raise OSError("disk full")

    monkeypatch.setattr(io.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(tmp_path / "x.json", "{}")
    assert list(tmp_path.iterdir()) == []


def test_json_text_never_writes_nan():
    text = json_text({"mean": math.nan, "rows": [math.inf, -math.inf, 1.5], "nested": {"x": (math.nan,)}})
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON")) == {
        "mean": None,
        "rows": [None, None, 1.5],
        "nested": {"x": [None]},
    }


@pytest.mark.parametrize(
    "case,message",
    [
        ("parent_is_file", "is a file, not a folder"),
        ("is_folder", "is a folder"),
        ("missing_parent", "does not exist"),
        ("not_regular", "not a regular file"),
        ("name_too_long", "too long"),
    ],
)
def test_output_files_that_cannot_be_written_are_refused_up_front(tmp_path, case, message):
    (tmp_path / "file").write_text("x")
    (tmp_path / "folder").mkdir()
    path = {
        "parent_is_file": tmp_path / "file" / "r.json",
        "is_folder": tmp_path / "folder",
        "missing_parent": tmp_path / "nowhere" / "r.json",
        "not_regular": "/dev/null",
        "name_too_long": tmp_path / ("x" * 250 + ".json"),
    }[case]
    with pytest.raises(ValueError, match=message) as err:
        check_output_file(path, "--json")
    assert str(err.value).startswith("--json ") and "\n" not in str(err.value)


def test_read_only_folder_is_refused(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root can write anywhere")
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(ValueError, match="not writable"):
            check_output_file(folder / "r.json", "--plot")
    finally:
        folder.chmod(0o700)


def test_an_ordinary_file_path_passes(tmp_path):
    assert check_output_file(tmp_path / "r.json", "--json") == tmp_path / "r.json"
    (tmp_path / "r.json").write_text("old")
    assert check_output_file(tmp_path / "r.json", "--json") == tmp_path / "r.json"  # replaced later: fine
    assert check_output_file(None, "--json") is None
