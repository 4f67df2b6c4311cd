"""`ClusterabilityMixin` on a Trainer subclass that keeps its own metrics, as TRL's trainers do; hand-made
partitions; resuming from the newest complete checkpoint; saves that cannot be scored."""

import shutil
from collections import defaultdict

import pytest
import torch
from transformers import Trainer, TrainerCallback

from hf_clusterable import ClusterabilityMixin, ClusterConfig
from hf_clusterable.training.trainer import ClusterableTrainer
from tests.testing_utils import NO_DROPOUT, make_args, pattern_data, random_partitions, tiny_model


class MetricsKeepingTrainer(Trainer):
    """A host trainer that, like TRL's, keeps plain floats in `self._metrics` and adds them to the logs itself."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        self._metrics["train" if model.training else "eval"]["host_loss"].append(float(loss))
        return (loss, outputs) if return_outputs else loss

    def log(self, logs, start_time=None):
        mode = "train" if self.model.training else "eval"
        logs.update({key: sum(values) / len(values) for key, values in self._metrics[mode].items()})
        super().log(logs, start_time)
        self._metrics[mode].clear()


class ClusterableHostTrainer(ClusterabilityMixin, MetricsKeepingTrainer):
    pass


def train(trainer_cls, tmp_path, **kwargs):
    trainer = trainer_cls(
        model=tiny_model("gpt2", **NO_DROPOUT),
        args=make_args(tmp_path, max_steps=4, logging_steps=2),
        train_dataset=pattern_data(64),
        cluster_config=ClusterConfig(loss_weight=20.0),
        optimizer_cls_and_kwargs=(torch.optim.SGD, {"lr": 0.5}),
        **kwargs,
    )
    trainer.train()
    return trainer


def test_mixin_on_a_host_with_its_own_metrics_trains_like_clusterable_trainer(tmp_path):
    ours = train(ClusterableTrainer, tmp_path / "ours")
    hosted = train(ClusterableHostTrainer, tmp_path / "hosted")
    want = dict(ours.model.named_parameters())
    for name, param in hosted.model.named_parameters():
        torch.testing.assert_close(param, want[name], rtol=0, atol=1e-6, msg=name)
    logs = [e for e in hosted.state.log_history if "loss" in e]
    assert len(logs) == 2
    for entry in logs:  # both trainers' metrics, neither overwriting the other
        assert {"host_loss", "task_loss", "cluster_loss", "clusterability", "clusterability_baseline"} <= entry.keys()
    assert logs[-1]["clusterability"] > logs[0]["clusterability"]
    assert hosted.cluster_targets == ours.cluster_targets


def test_hand_made_partitions_are_used(tmp_path, monkeypatch):
    model = tiny_model("gpt2", **NO_DROPOUT)
    partitions = random_partitions(model, k=3)

    def no_clustering(*args, **kwargs):
        raise AssertionError("given partitions must not be recomputed")

    monkeypatch.setattr("hf_clusterable.training.mixin.cluster_model", no_clustering)
    trainer = ClusterableTrainer(
        model=model,
        args=make_args(tmp_path, max_steps=2),
        train_dataset=pattern_data(32),
        cluster_config=ClusterConfig(n_clusters=3),
        partitions=partitions,
    )
    trainer.train()
    assert trainer.partitions == partitions


@pytest.mark.parametrize("k,drop,match", [(4, False, "n_clusters"), (3, True, "missing")])
def test_hand_made_partitions_that_do_not_fit_are_refused(tmp_path, k, drop, match):
    model = tiny_model("gpt2")
    partitions = random_partitions(model, k=k)
    if drop:
        partitions.pop(next(iter(partitions)))
    with pytest.raises(ValueError, match=match):
        ClusterableTrainer(
            model=model, args=make_args(tmp_path), cluster_config=ClusterConfig(n_clusters=3), partitions=partitions
        )
    assert not any(tmp_path.iterdir())


class StepRecorder(TrainerCallback):
    def __init__(self):
        self.seen = []

    def on_step_end(self, args, state, control, **kwargs):
        self.seen.append(state.global_step)


def test_resume_skips_a_checkpoint_cut_off_while_saving(tmp_path):
    args = make_args(tmp_path, max_steps=4, save_strategy="steps", save_steps=2)
    config = ClusterConfig(loss_weight=20.0)
    data = pattern_data()
    first = ClusterableTrainer(model=tiny_model("gpt2"), args=args, train_dataset=data, cluster_config=config)
    first.train()
    (tmp_path / "checkpoint-4" / "trainer_state.json").unlink()  # as if the process died mid-save
    steps = StepRecorder()
    resumed = ClusterableTrainer(
        model=tiny_model("gpt2"), args=args, train_dataset=pattern_data(), cluster_config=config, callbacks=[steps]
    )
    with pytest.warns(UserWarning, match="skipping .*checkpoint-4"):
        resumed.train(resume_from_checkpoint=True)
    assert steps.seen == [3, 4]  # resumed from checkpoint-2
    shutil.rmtree(tmp_path / "checkpoint-2")
    shutil.rmtree(tmp_path / "checkpoint-4")
    with pytest.raises(ValueError, match="no complete checkpoint"):
        resumed.train(resume_from_checkpoint=True)


def test_a_save_of_unscorable_weights_writes_nothing(tmp_path):
    trainer = ClusterableTrainer(
        model=tiny_model("gpt2"), args=make_args(tmp_path), cluster_config=ClusterConfig(init="blocks")
    )
    with torch.no_grad():
        trainer.model.transformer.h[0].mlp.c_fc.weight.fill_(float("nan"))
    with pytest.raises(ValueError, match="NaN"):
        trainer.save_model(str(tmp_path / "final"))
    assert not (tmp_path / "final").exists()


class PoisonAt(TrainerCallback):
    """Turns one weight into NaN at the end of a step, as a diverged run would."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step:
            with torch.no_grad():
                model.transformer.h[0].mlp.c_fc.weight.fill_(float("nan"))


def test_a_checkpoint_of_unscorable_weights_is_not_started(tmp_path):
    trainer = ClusterableTrainer(
        model=tiny_model("gpt2"),
        args=make_args(tmp_path, max_steps=3, save_strategy="steps", save_steps=1),
        train_dataset=pattern_data(64),
        cluster_config=ClusterConfig(init="blocks"),
        callbacks=[PoisonAt(2)],
    )
    with pytest.raises(ValueError, match="NaN"):
        trainer.train()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("checkpoint")) == ["checkpoint-1"]
    assert (tmp_path / "checkpoint-1" / "trainer_state.json").is_file()
