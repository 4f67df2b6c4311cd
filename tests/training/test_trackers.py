"""Per-matrix clusterability and the block heatmap reach TensorBoard (read back from the event file) and W&B."""

import pytest

from hf_clusterable import ClusterConfig
from hf_clusterable.training.trackers import HEATMAP_TAG
from hf_clusterable.training.trainer import ClusterableTrainer
from tests.testing_utils import NO_DROPOUT, make_args, pattern_data, tiny_model


def train(tmp_path, report_to):
    trainer = ClusterableTrainer(
        model=tiny_model("gpt2", **NO_DROPOUT),
        args=make_args(
            tmp_path,
            report_to=report_to,
            max_steps=6,
            eval_strategy="steps",
            eval_steps=2,
            save_strategy="steps",
            save_steps=3,
            logging_steps=2,
        ),
        train_dataset=pattern_data(64),
        eval_dataset=pattern_data(16, seed=1),
        cluster_config=ClusterConfig(loss_weight=20.0),
    )
    trainer.train()
    return trainer


def test_tensorboard_gets_per_matrix_scores_and_the_heatmap(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    trainer = train(tmp_path, ["tensorboard"])
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    final = {row.name: row.score for row in trainer.cluster_report().rows}
    for name, score in final.items():
        values = events.Scalars(f"clusterability/{name}")
        assert [v.step for v in values] == [2, 3, 4, 6]  # every evaluation and checkpoint, once per step
        assert values[-1].value == pytest.approx(score, abs=1e-6)
        assert values[-1].value > values[0].value
    assert events.Scalars("clusterability/mean")[-1].value == pytest.approx(sum(final.values()) / len(final))
    assert HEATMAP_TAG in tags["images"]
    image = events.Images(HEATMAP_TAG)[-1]
    assert image.step == 6 and image.width > 100 and image.height > 100
    assert "train/clusterability" in tags["scalars"] and "eval/clusterability" in tags["scalars"]  # the logs too


def test_a_run_without_trackers_writes_no_event_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    train(tmp_path, "none")
    assert not (tmp_path / "tb").exists()


def test_wandb_gets_per_matrix_scores_and_the_heatmap(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    logged = []
    original = wandb.log
    monkeypatch.setattr(wandb, "log", lambda data, *a, **k: (logged.append(data), original(data, *a, **k)))
    trainer = train(tmp_path, ["wandb"])
    ours = [d for d in logged if HEATMAP_TAG in d]
    assert [d["train/global_step"] for d in ours] == [2, 3, 4, 6]
    for row in trainer.cluster_report().rows:
        assert ours[-1][f"clusterability/{row.name}"] == pytest.approx(row.score, abs=1e-6)
