"""TRL's `SFTTrainer` and `DPOTrainer` through `ClusterabilityMixin`: the loss trains, TRL's metrics survive, the
cluster files are saved with every checkpoint and restored on resume, and only the policy is regularised."""

import copy

import pytest
import torch
from datasets import Dataset

from hf_clusterable import ClusterabilityMixin, ClusterConfig, load_clusters
from hf_clusterable.constants import CLUSTERS_NAME, CONFIG_NAME, METRICS_NAME
from hf_clusterable.examples.offline import pydoc_text
from tests.testing_utils import tiny_model, tiny_tokenizer


trl = pytest.importorskip("trl")


class ClusterableSFTTrainer(ClusterabilityMixin, trl.SFTTrainer):
    pass


class ClusterableDPOTrainer(ClusterabilityMixin, trl.DPOTrainer):
    pass


CONFIG = ClusterConfig(loss_weight=20.0)
COMMON = dict(
    report_to="none",
    use_cpu=True,
    per_device_train_batch_size=8,
    learning_rate=3e-3,
    logging_steps=4,
    disable_tqdm=True,
    save_strategy="steps",
    save_steps=4,
    seed=0,
)


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def small_lm(tokenizer):
    eos = tokenizer.eos_token_id
    return tiny_model("gpt2", vocab_size=len(tokenizer), n_positions=128, bos_token_id=eos, eos_token_id=eos)


def text_data(n: int = 64) -> Dataset:
    return Dataset.from_dict({"text": [t for t in pydoc_text()[:400] if len(t) > 60][:n]})


def preference_data() -> Dataset:
    prompts = ["The function", "A module", "The class", "An object"]
    chosen = [" returns a value.", " is imported once.", " defines methods.", " has a type."]
    rejected = [" zz qq zz", " xx xx yy", " qq yy qq", " yy zz xx"]
    return Dataset.from_dict({"prompt": prompts * 4, "chosen": chosen * 4, "rejected": rejected * 4})


def logged(trainer) -> list[dict]:
    return [e for e in trainer.state.log_history if "loss" in e]


def assert_saved_and_resumable(trainer_cls, make, tmp_path, monkeypatch):
    """The checkpoint holds the cluster files; a fresh trainer resumed from it adopts them instead of clustering."""
    checkpoint = tmp_path / "checkpoint-4"
    for name in (CONFIG_NAME, CLUSTERS_NAME, METRICS_NAME):
        assert (checkpoint / name).is_file(), name
    saved = load_clusters(checkpoint)

    def no_clustering(*args, **kwargs):
        raise AssertionError("partitions must be restored, not recomputed")

    monkeypatch.setattr("hf_clusterable.training.mixin.cluster_model", no_clustering)
    resumed = make()
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.partitions.keys() == saved.keys()
    assert all(resumed.partitions[n] == saved[n] for n in saved)


@pytest.mark.parametrize("packing", [False, True])
def test_sft_trainer_with_the_mixin(tmp_path, tokenizer, packing, monkeypatch):
    def make():
        args = trl.SFTConfig(str(tmp_path), max_steps=8, max_length=64, packing=packing, **COMMON)
        return ClusterableSFTTrainer(
            model=small_lm(tokenizer),
            args=args,
            train_dataset=text_data(),
            processing_class=tokenizer,
            cluster_config=CONFIG,
        )

    trainer = make()
    assert trainer.args.gradient_checkpointing  # SFTConfig's default, kept
    trainer.train()
    logs = logged(trainer)
    assert len(logs) == 2
    for entry in logs:  # TRL's metrics and ours side by side
        assert {"mean_token_accuracy", "entropy", "num_tokens", "task_loss", "cluster_loss"} <= entry.keys()
    assert logs[0]["clusterability"] > logs[0]["clusterability_baseline"] + 0.2
    assert logs[1]["clusterability"] > logs[0]["clusterability"]
    assert logs[1]["num_tokens"] > logs[0]["num_tokens"]
    assert_saved_and_resumable(ClusterableSFTTrainer, make, tmp_path, monkeypatch)


def test_sft_trainer_loads_a_model_given_as_a_string(tmp_path, tokenizer):
    small_lm(tokenizer).save_pretrained(tmp_path / "model")
    args = trl.SFTConfig(str(tmp_path / "out"), max_steps=2, max_length=64, **{**COMMON, "logging_steps": 1})
    trainer = ClusterableSFTTrainer(
        model=str(tmp_path / "model"),
        args=args,
        train_dataset=text_data(16),
        processing_class=tokenizer,
        cluster_config=CONFIG,
    )
    assert len(trainer.cluster_targets) == 4
    assert trainer.cluster_config.model_type == "gpt2"
    trainer.train()
    assert [e["clusterability"] > 0 for e in logged(trainer)] == [True, True]


def test_sft_trainer_refuses_bad_targets_before_loading(tmp_path, tokenizer):
    args = trl.SFTConfig(str(tmp_path), max_steps=2, **{**COMMON, "save_strategy": "no"})
    with pytest.raises(ValueError, match="match no module"):
        ClusterableSFTTrainer(
            model=small_lm(tokenizer),
            args=args,
            train_dataset=text_data(16),
            processing_class=tokenizer,
            cluster_config=ClusterConfig(targets=["mlp.up_proj"]),
        )


def test_dpo_trainer_with_the_mixin_regularises_only_the_policy(tmp_path, tokenizer, monkeypatch):
    def make():
        policy = small_lm(tokenizer)
        args = trl.DPOConfig(str(tmp_path), max_steps=8, **{**COMMON, "per_device_train_batch_size": 4})
        return ClusterableDPOTrainer(
            model=policy,
            ref_model=copy.deepcopy(policy),
            args=args,
            train_dataset=preference_data(),
            processing_class=tokenizer,
            cluster_config=CONFIG,
        )

    trainer = make()
    reference = {n: p.detach().clone() for n, p in trainer.ref_model.named_parameters()}
    trainer.train()
    logs = logged(trainer)
    assert len(logs) == 2
    for entry in logs:
        assert {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"} <= entry.keys()
        assert {"task_loss", "cluster_loss", "clusterability"} <= entry.keys()
    assert logs[1]["clusterability"] > logs[0]["clusterability"] > logs[0]["clusterability_baseline"]
    policy_modules = {id(m) for m in trainer.model.modules()}
    assert all(id(module) in policy_modules for module, _ in trainer._loss_fn()._terms)
    for name, param in trainer.ref_model.named_parameters():  # the reference model is neither trained nor hooked
        torch.testing.assert_close(param, reference[name], rtol=0, atol=0)
    assert not any(m._forward_hooks for m in trainer.ref_model.modules())
    assert_saved_and_resumable(ClusterableDPOTrainer, make, tmp_path, monkeypatch)


def test_dpo_with_peft_scores_the_adapted_policy_not_its_adapter_free_reference(tmp_path, tokenizer):
    """With PEFT and no ref_model, TRL's reference is the policy with adapters disabled, run without gradients: the
    loss must see the adapted weights (W + BA), so the adapters learn to raise clusterability."""
    from peft import LoraConfig

    args = trl.DPOConfig(str(tmp_path), max_steps=8, **{**COMMON, "per_device_train_batch_size": 4})
    trainer = ClusterableDPOTrainer(
        model=small_lm(tokenizer),
        args=args,
        train_dataset=preference_data(),
        processing_class=tokenizer,
        cluster_config=CONFIG,
        peft_config=LoraConfig(r=4, target_modules=["c_fc", "c_proj"], fan_in_fan_out=True),
    )
    assert trainer.ref_model is None
    trainer.train()
    logs = logged(trainer)
    assert logs[1]["clusterability"] > logs[0]["clusterability"]
    assert all(k in logs[1] for k in ("rewards/margins", "cluster_loss"))
    report = trainer.cluster_report()
    assert report.mean == pytest.approx(trainer._loss_fn()().item(), abs=1e-6)  # scored with the adapters on
    with trainer.model.disable_adapter():
        assert trainer._loss_fn()().item() < report.mean  # the adapter-free weights score lower
