import json
import math
import os
import subprocess
import sys

import pytest

from hf_clusterable import ClusterConfig
from hf_clusterable.analysis.analyze import analyze
from hf_clusterable.constants import METRICS_NAME
from hf_clusterable.modeling.measure import MatrixScore
from hf_clusterable.utils import io
from hf_clusterable.utils.io import atomic_write, check_output_file, json_text
from tests.testing_utils import BLOCKS, make_args, planted_model, planted_task, tiny_model


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


# ---- every JSON file we write is strict JSON: NaN and infinities ("nothing to measure") are null -----------------


def strict(path) -> dict:
    return json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"bare {c} in {path.name}"))


def test_trainer_metrics_file_writes_null_for_a_nan_score(tmp_path, monkeypatch):
    from hf_clusterable.training.trainer import ClusterableTrainer

    trainer = ClusterableTrainer(
        model=tiny_model("gpt2"), args=make_args(tmp_path), cluster_config=ClusterConfig(init="blocks")
    )

    def nan_scores(model, targets, partitions):
        return [MatrixScore(t.name, t.shape, math.nan, 0.25) for t in targets]

    monkeypatch.setattr("hf_clusterable.training.mixin.score_matrices", nan_scores)
    trainer.save_cluster_files(str(tmp_path))
    metrics = strict(tmp_path / METRICS_NAME)
    assert metrics["mean"] is None and metrics["matrices"][0]["score"] is None


def test_analysis_json_writes_null_where_there_is_nothing_to_measure(tmp_path):
    model = planted_model()
    report = analyze(model, planted_task(), BLOCKS, random_splits=0, max_categories=0, steps=1, per_cluster=False)
    assert math.isnan(report.circuits.mean_fraction)  # no category measured: nothing to average
    report.save(tmp_path, model)
    assert strict(tmp_path / "analysis.json")["circuits"]["mean_fraction"] is None


def test_cluster_config_refuses_to_write_nan():
    config = ClusterConfig()
    config.loss_weight = math.nan  # set after validation, as a careless caller could
    with pytest.raises(ValueError, match="JSON compliant"):
        config.to_json_string()
