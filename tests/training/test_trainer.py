import math

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, Trainer

from hf_clusterable import ClusterConfig, Partition, load_clusters, measure
from hf_clusterable.constants import CLUSTERS_NAME, CONFIG_NAME, METRICS_NAME
from hf_clusterable.training.trainer import ClusterableTrainer
from tests.testing_utils import NO_DROPOUT, make_args, pattern_data, tiny_model


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("loss_weight", [0.0, 20.0, 40.0])
def test_clusterability_rises_with_the_loss_and_the_task_still_learns(tmp_path, loss_weight):
    trainer = ClusterableTrainer(
        model=tiny_model("gpt2", **NO_DROPOUT),
        args=make_args(tmp_path),
        train_dataset=pattern_data(),
        cluster_config=ClusterConfig(loss_weight=loss_weight),
    )
    before = trainer.cluster_report()
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "clusterability" in entry]
    after = logs[-1]
    assert before.mean == pytest.approx(before.baseline, abs=0.12)  # random init: near its baseline
    assert after["task_loss"] < 0.5 * logs[0]["task_loss"]  # the task learns
    assert after["loss"] == pytest.approx(after["task_loss"] + after["cluster_loss"], rel=1e-3, abs=1e-4)
    if loss_weight > 0:
        assert after["clusterability"] >= 0.9
    else:
        assert after["clusterability"] == pytest.approx(after["clusterability_baseline"], abs=0.12)
        assert after["cluster_loss"] == 0.0


@pytest.mark.parametrize("model_type", ["gpt2", "gpt_neox", "gemma3_text", "llama"])
def test_each_architecture_trains_towards_block_diagonal_mlps(tmp_path, model_type):
    trainer = ClusterableTrainer(
        model=tiny_model(model_type),
        args=make_args(tmp_path, max_steps=25, learning_rate=1e-2),
        train_dataset=pattern_data(),
        cluster_config=ClusterConfig(loss_weight=40.0),
    )
    start = trainer.cluster_report()
    trainer.train()
    end = trainer.cluster_report()
    assert end.mean > start.mean + 0.3, (start.mean, end.mean)
    assert len(end.rows) == len(trainer.cluster_targets) >= 4


@pytest.mark.parametrize("scaled_by_model", [True, False])
def test_gradient_accumulation_is_exact(tmp_path, scaled_by_model):
    """batch 8 x GA 1 and batch 2 x GA 4 give the same update, whether or not the model scales the loss for GA."""
    states = []
    for batch, ga in ((8, 1), (2, 4)):
        trainer = ClusterableTrainer(
            model=tiny_model("gpt2", **NO_DROPOUT),
            args=make_args(
                tmp_path / f"{batch}", per_device_train_batch_size=batch, gradient_accumulation_steps=ga, max_steps=2
            ),
            train_dataset=pattern_data(16),
            cluster_config=ClusterConfig(loss_weight=30.0, init="blocks"),
            optimizer_cls_and_kwargs=(torch.optim.SGD, {"lr": 0.5}),
        )
        trainer.model_accepts_loss_kwargs = scaled_by_model
        trainer.train()
        states.append(trainable_state(trainer.model))
    for name in states[0]:
        torch.testing.assert_close(states[0][name], states[1][name], rtol=1e-4, atol=1e-6, msg=name)


def test_regulariser_weight_does_not_depend_on_accumulation(tmp_path):
    """With a zero task loss the update is lambda * grad(1 - C) per optimizer step, whatever GA is."""
    updates = []
    for ga in (1, 3):
        model = tiny_model("gpt2", **NO_DROPOUT)
        trainer = ClusterableTrainer(
            model=model,
            args=make_args(
                tmp_path / f"ga{ga}", per_device_train_batch_size=2, gradient_accumulation_steps=ga, max_steps=1
            ),
            train_dataset=pattern_data(6),
            cluster_config=ClusterConfig(loss_weight=10.0, init="blocks"),
            compute_loss_func=lambda outputs, labels, num_items_in_batch=None: outputs.logits.sum() * 0.0,
            optimizer_cls_and_kwargs=(torch.optim.SGD, {"lr": 1.0}),
        )
        w0 = model.transformer.h[0].mlp.c_fc.weight.detach().clone()
        trainer.train()
        updates.append(model.transformer.h[0].mlp.c_fc.weight.detach() - w0)
    torch.testing.assert_close(updates[0], updates[1])
    assert updates[0].abs().max() > 0


def test_partitions_saved_with_checkpoints_and_restored_exactly_on_resume(tmp_path, monkeypatch):
    config = ClusterConfig(loss_weight=20.0)
    args = make_args(tmp_path, max_steps=6, save_strategy="steps", save_steps=3, logging_steps=1)
    full = ClusterableTrainer(
        model=tiny_model("gpt2", **NO_DROPOUT), args=args, train_dataset=pattern_data(), cluster_config=config
    )
    full.train()
    checkpoint = tmp_path / "checkpoint-3"
    for name in (CONFIG_NAME, CLUSTERS_NAME, METRICS_NAME, "model.safetensors"):
        assert (checkpoint / name).is_file(), name
    saved = load_clusters(checkpoint)
    assert all(saved[n] == full.partitions[n] for n in saved)
    final = trainable_state(full.model)

    def no_recompute(*args, **kwargs):
        raise AssertionError("partitions must be restored, not recomputed")

    monkeypatch.setattr("hf_clusterable.training.mixin.cluster_model", no_recompute)
    resumed = ClusterableTrainer(
        model=tiny_model("gpt2", seed=1, **NO_DROPOUT), args=args, train_dataset=pattern_data(), cluster_config=config
    )
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert all(resumed.partitions[n] == saved[n] for n in saved)
    for name, value in trainable_state(resumed.model).items():
        torch.testing.assert_close(value, final[name], msg=name)


def test_final_model_reloads_with_the_same_scores(tmp_path):
    trainer = ClusterableTrainer(
        model=tiny_model("llama"),
        args=make_args(tmp_path, max_steps=20),
        train_dataset=pattern_data(),
        cluster_config=ClusterConfig(loss_weight=20.0, n_clusters=3),
    )
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    at_save = trainer.cluster_report()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    assert ClusterConfig.from_pretrained(tmp_path / "final").model_type == "llama"
    report = measure(reloaded, tmp_path / "final")
    assert [r.name for r in report.rows] == [r.name for r in at_save.rows]
    for a, b in zip(report.rows, at_save.rows, strict=True):
        assert a.score == pytest.approx(b.score, abs=1e-6)


def test_spectral_warmup_and_reclustering_schedule(tmp_path, monkeypatch):
    import hf_clusterable.training.mixin as trainer_module

    calls = []
    original = trainer_module.cluster_model

    def counting(model, config, targets, **kwargs):
        calls.append(trainer.state.global_step)
        return original(model, config, targets, **kwargs)

    monkeypatch.setattr(trainer_module, "cluster_model", counting)
    trainer = ClusterableTrainer(
        model=tiny_model("gpt2", **NO_DROPOUT),
        args=make_args(tmp_path, max_steps=10, logging_steps=1),
        train_dataset=pattern_data(),
        cluster_config=ClusterConfig(loss_weight=20.0, cluster_step=3, recluster_every=4),
    )
    trainer.train()
    assert calls == [3, 7]
    logged = [e["step"] for e in trainer.state.log_history if "cluster_loss" in e]
    assert logged[0] == 4  # steps 1-3 train on the task alone


def test_eval_loss_is_the_task_loss_and_eval_metrics_are_logged(tmp_path):
    data = pattern_data(32)
    model = tiny_model("gpt2")
    plain = Trainer(model=model, args=make_args(tmp_path / "plain"), eval_dataset=data).evaluate()
    ours = ClusterableTrainer(
        model=model, args=make_args(tmp_path / "ours"), eval_dataset=data, cluster_config=ClusterConfig(loss_weight=40)
    ).evaluate()
    assert ours["eval_loss"] == pytest.approx(plain["eval_loss"])
    assert 0 < ours["eval_clusterability_baseline"] < ours["eval_clusterability"] < 1


def test_lora_regularises_the_effective_weight_and_leaves_the_base_frozen(tmp_path):
    model = get_peft_model(
        tiny_model("gpt2", **NO_DROPOUT), LoraConfig(r=4, target_modules=["c_fc", "c_proj"], fan_in_fan_out=True)
    )
    base = model.base_model.model.transformer.h[0].mlp.c_fc.base_layer.weight.detach().clone()
    trainer = ClusterableTrainer(
        model=model,
        args=make_args(tmp_path, max_steps=40, learning_rate=1e-2),
        train_dataset=pattern_data(),
        cluster_config=ClusterConfig(loss_weight=40.0),
    )
    start = trainer.cluster_report().mean
    trainer.train()
    assert trainer.cluster_report().mean > start + 0.1
    torch.testing.assert_close(model.base_model.model.transformer.h[0].mlp.c_fc.base_layer.weight, base)


def test_bf16_weights_train_with_fp32_scores(tmp_path):
    model = tiny_model("gemma").to(torch.bfloat16)
    trainer = ClusterableTrainer(
        model=model,
        args=make_args(tmp_path, max_steps=5, logging_steps=5),
        train_dataset=pattern_data(),
        cluster_config=ClusterConfig(loss_weight=20.0),
    )
    trainer.train()
    entry = next(e for e in trainer.state.log_history if "clusterability" in e)
    assert math.isfinite(entry["clusterability"]) and model.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16


@pytest.mark.slow
def test_torch_compile(tmp_path):
    trainer = ClusterableTrainer(
        model=tiny_model("gpt2", **NO_DROPOUT),
        args=make_args(tmp_path, max_steps=3, logging_steps=1, torch_compile=True),
        train_dataset=pattern_data(),
        cluster_config=ClusterConfig(loss_weight=20.0),
    )
    trainer.train()
    assert any("clusterability" in e for e in trainer.state.log_history)


@pytest.mark.parametrize(
    "config,match",
    [
        (ClusterConfig(n_clusters=40), "smaller side"),
        (ClusterConfig(targets=["mlp.up_proj"]), "match no module"),
    ],
)
def test_bad_config_fails_before_training(tmp_path, config, match):
    with pytest.raises(ValueError, match=match):
        ClusterableTrainer(model=tiny_model("gpt2"), args=make_args(tmp_path), cluster_config=config)


def test_checkpoint_whose_partitions_do_not_match_is_refused(tmp_path):
    args = make_args(tmp_path, max_steps=2, save_strategy="steps", save_steps=2)
    ClusterableTrainer(
        model=tiny_model("gpt2"), args=args, train_dataset=pattern_data(), cluster_config=ClusterConfig()
    ).train()
    ckpt = tmp_path / "checkpoint-2"
    other = ClusterableTrainer(
        model=tiny_model("gpt2"), args=args, train_dataset=pattern_data(), cluster_config=ClusterConfig(n_clusters=3)
    )
    with pytest.raises(ValueError, match="different cluster config"):
        other.train(resume_from_checkpoint=str(ckpt))
    bigger = ClusterableTrainer(
        model=tiny_model("gpt2", n_inner=128), args=args, train_dataset=pattern_data(), cluster_config=ClusterConfig()
    )
    with pytest.raises(ValueError, match="does not match this model"):
        bigger.train(resume_from_checkpoint=str(ckpt))


def test_blocks_partitions_exist_from_the_start(tmp_path):
    trainer = ClusterableTrainer(
        model=tiny_model("gpt_neox"), args=make_args(tmp_path), cluster_config=ClusterConfig(init="blocks")
    )
    name = "gpt_neox.layers.0.mlp.dense_h_to_4h"
    assert trainer.partitions[name] == Partition.blocks(96, 32, 4)
