"""Gradient checkpointing gives the same update as training without it, for both kinds and every common setting."""

import pytest
import torch
from peft import LoraConfig, get_peft_model

from hf_clusterable import ClusterConfig
from hf_clusterable.core.partition import Partition
from hf_clusterable.modeling.targets import base_model, find_targets
from hf_clusterable.training.loss import ClusterabilityLoss
from hf_clusterable.training.trainer import ClusterableTrainer
from tests.testing_utils import NO_DROPOUT, make_args, pattern_data, tiny_model


def one_step_update(
    tmp_path,
    checkpointing: str | None = None,
    via: str = "args",
    ga: int = 1,
    lora: bool = False,
    bf16: bool = False,
    compile: bool = False,
) -> dict[str, torch.Tensor]:
    """Parameter change after one SGD step on 8 sequences, the regulariser weighted so it dominates the update."""
    model = tiny_model("gpt2", **NO_DROPOUT)
    if lora:
        config = LoraConfig(r=4, target_modules=["c_fc", "c_proj"], fan_in_fan_out=True, init_lora_weights=False)
        model = get_peft_model(model, config)
    reentrant = checkpointing == "reentrant"
    args = {}
    if checkpointing and via == "args":
        args = dict(gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    elif checkpointing:
        base = model.get_base_model() if lora else model
        base.gradient_checkpointing_enable({"use_reentrant": reentrant})
        if reentrant:  # reentrant checkpointing needs an input that requires grad (what Trainer does for us)
            base.enable_input_require_grads()
    trainer = ClusterableTrainer(
        model=model,
        args=make_args(
            tmp_path / f"{checkpointing}-{via}",
            per_device_train_batch_size=8 // ga,
            gradient_accumulation_steps=ga,
            max_steps=1,
            bf16=bf16,
            torch_compile=compile,
            **args,
        ),
        train_dataset=pattern_data(8),
        cluster_config=ClusterConfig(loss_weight=30.0, init="blocks"),
        optimizer_cls_and_kwargs=(torch.optim.SGD, {"lr": 0.5}),
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    trainer.train()
    assert base_model(trainer.model).is_gradient_checkpointing == (checkpointing is not None)
    return {n: (p.detach() - before[n]).float() for n, p in model.named_parameters() if p.requires_grad}


def assert_same_update(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    assert max(u.abs().max() for u in want.values()) > 1e-2  # the step moves the weights
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=1e-5, msg=name)


SETTINGS = {
    "trainer-args": {},
    "model-enable": {"via": "model"},
    "accumulation": {"ga": 4},
    "lora": {"lora": True},
    "bf16-autocast": {"bf16": True},
}


_WITHOUT: dict[str, dict[str, torch.Tensor]] = {}  # the update without checkpointing, once per setting


@pytest.mark.parametrize("kind", ["non-reentrant", "reentrant"])
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_checkpointing_gives_the_same_update(tmp_path, kind, setting):
    options = SETTINGS[setting]
    if setting not in _WITHOUT:
        _WITHOUT[setting] = one_step_update(tmp_path, None, **{k: v for k, v in options.items() if k != "via"})
    assert_same_update(one_step_update(tmp_path, kind, **options), _WITHOUT[setting])


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["non-reentrant", "reentrant"])
def test_checkpointing_under_torch_compile_gives_the_same_update(tmp_path, kind):
    assert_same_update(one_step_update(tmp_path, kind, compile=True), one_step_update(tmp_path, None, compile=True))


def test_masses_are_fp32_and_unchanged_under_autocast():
    model = tiny_model("gpt2")
    targets = find_targets(model)
    partitions = {t.name: Partition.blocks(*t.shape, 4) for t in targets}
    loss = ClusterabilityLoss(model, targets, partitions)
    want = loss.scores()
    inputs = torch.arange(16)[None]
    with torch.autocast("cpu", dtype=torch.bfloat16), loss.capture():
        model(inputs)
        got = loss.scores()
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=0)
