import copy

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model

from hf_clusterable import ClusterConfig
from hf_clusterable.training.distill import Teacher, distillation_loss
from hf_clusterable.training.trainer import ClusterableTrainer
from tests.testing_utils import make_args, pattern_data, random_tokens, tiny_model


def test_kl_matches_torch_and_ignores_padding_and_the_last_position():
    g = torch.Generator().manual_seed(0)
    student = torch.randn(2, 5, 7, generator=g, requires_grad=True)
    teacher = torch.randn(2, 5, 7, generator=g)
    labels = torch.tensor([[1, 2, 3, -100, -100], [4, 5, 6, 1, 2]])
    t = 2.0
    loss = distillation_loss(student, teacher, labels, temperature=t)
    keep = labels[:, 1:] != -100  # position i predicts label i + 1
    s, te = student[:, :-1][keep] / t, teacher[:, :-1][keep] / t
    expected = F.kl_div(F.log_softmax(s, -1), F.log_softmax(te, -1), log_target=True, reduction="batchmean") * t**2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    (grad,) = torch.autograd.grad(loss, student)
    (expected_grad,) = torch.autograd.grad(expected, student)
    assert torch.allclose(grad, expected_grad, atol=1e-6)
    assert not grad[0, 2:].any() and not grad[:, -1].any()


def test_kl_and_its_gradient_are_exactly_zero_when_student_equals_teacher():
    logits = torch.randn(3, 6, 11, requires_grad=True)
    loss = distillation_loss(logits, logits.detach().clone(), None, temperature=1.7)
    (grad,) = torch.autograd.grad(loss, logits)
    assert loss.item() == 0.0 and not grad.any()


def test_teacher_is_a_frozen_copy_and_peft_uses_the_base_without_copying():
    model = tiny_model("llama")
    teacher = Teacher(model, torch.bfloat16)
    assert teacher.model is not model and next(teacher.model.parameters()).dtype == torch.bfloat16
    assert not any(p.requires_grad for p in teacher.model.parameters())
    x = random_tokens(2)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.mul_(3.0)  # the student moves, the teacher does not
        assert not torch.allclose(teacher.logits({"input_ids": x}).float(), model(x).logits, atol=1e-2)

    base = tiny_model("llama")
    reference = copy.deepcopy(base)
    peft = get_peft_model(base, LoraConfig(target_modules=["up_proj"], init_lora_weights=False))
    peft.train()
    teacher = Teacher(peft)
    assert teacher.model is peft
    with torch.no_grad():
        assert torch.equal(teacher.logits({"input_ids": x}), reference(x).logits)
        assert not torch.allclose(peft(input_ids=x).logits, reference(x).logits)
    assert peft.training  # the teacher's forward leaves the training mode as it was


@pytest.mark.parametrize("gradient_accumulation_steps", [1, 2])
def test_distillation_leaves_the_first_update_unchanged(tmp_path, gradient_accumulation_steps):
    """At the first step the student is the teacher: zero KL, and the update is bit-for-bit that without it."""
    states = []
    for distill_weight in (0.0, 5.0):
        model = tiny_model("llama")
        trainer = ClusterableTrainer(
            model=model,
            args=make_args(tmp_path, max_steps=1, logging_steps=1, per_device_train_batch_size=4,
                           gradient_accumulation_steps=gradient_accumulation_steps),
            train_dataset=pattern_data(), cluster_config=ClusterConfig(loss_weight=5.0, distill_weight=distill_weight),
        )  # fmt: skip
        trainer.train()
        states.append({n: p.detach().clone() for n, p in model.named_parameters()})
        log = next(e for e in trainer.state.log_history if "task_loss" in e)
        if distill_weight:
            assert log["distill_loss"] == 0.0
    assert all(torch.equal(states[0][n], states[1][n]) for n in states[0])


def test_distillation_pulls_toward_the_starting_model(tmp_path):
    """Later steps: the KL is logged, positive, and a strong weight keeps the outputs closer to the start."""
    x = random_tokens(4)
    start = tiny_model("llama")
    with torch.no_grad():
        reference = F.log_softmax(start(x).logits, -1)
    drift = []
    for distill_weight in (0.0, 50.0):
        model = tiny_model("llama")
        trainer = ClusterableTrainer(
            model=model, args=make_args(tmp_path, max_steps=8, logging_steps=1, learning_rate=1e-2),
            train_dataset=pattern_data(), cluster_config=ClusterConfig(loss_weight=40.0, distill_weight=distill_weight,
                                                                       distill_temperature=2.0),
        )  # fmt: skip
        trainer.train()
        with torch.no_grad():
            now = F.log_softmax(model.eval()(x).logits, -1)
        drift.append(float(F.kl_div(now, reference, log_target=True, reduction="batchmean")))
        logs = [e for e in trainer.state.log_history if "task_loss" in e]
        assert all(e["cluster_loss_weight"] == 40.0 for e in logs)
        if distill_weight:
            assert logs[-1]["distill_loss"] > 0.0
        else:
            assert "distill_loss" not in logs[-1]
    assert drift[1] < drift[0]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(distill_weight=-1.0), "distill_weight"),
        (dict(distill_temperature=0.0), "distill_temperature"),
        (dict(teacher_dtype="float16"), "teacher_dtype"),
    ],
)
def test_bad_distillation_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ClusterConfig(**kwargs)
