"""Self-distillation: keep the model's next-token distribution close to the frozen starting model's.

The clusterability loss moves weights; on a pretrained model the held-out loss is what users pay for that. A KL term
toward the model's own starting predictions (a teacher that costs no labels) holds the behaviour in place while the
weights reorganise. Memory first: the teacher runs under `no_grad`; a PEFT model is its own teacher with adapters
disabled (no copy), any other model gets one frozen copy, made once, optionally in bf16.

The KL's gradient is written out (`softmax(student) - softmax(teacher)`, scaled), so a student identical to its
teacher gets exactly zero loss and exactly zero gradient: adding distillation then changes nothing.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext

import torch
from peft import PeftModel
from torch import nn

from ..modeling.targets import base_model


class _TokenKL(torch.autograd.Function):
    """`T^2 * sum_positions w * KL(softmax(t / T) || softmax(s / T))` with a gradient that is exactly 0 when s == t."""

    @staticmethod
    def forward(ctx, student, teacher, weights, temperature):
        log_s = torch.log_softmax(student.float() / temperature, dim=-1)
        log_t = torch.log_softmax(teacher.float() / temperature, dim=-1)
        p_t = log_t.exp()
        per_position = (p_t * (log_t - log_s)).sum(-1)
        loss = (per_position * weights).sum() * temperature**2
        # d loss / d student = T * w * (p_s - p_t): one vocabulary-sized tensor kept for the backward
        grad = (log_s.exp_() - p_t).mul_((weights * temperature).unsqueeze(-1))
        ctx.save_for_backward(grad)
        ctx.student_dtype = student.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        return (grad * grad_output).to(ctx.student_dtype), None, None, None


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None,
    temperature: float = 1.0,
    num_items: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean KL(teacher || student) per predicted token, times `temperature ** 2`.

    Logits are `(batch, length, vocab)`. Only positions that predict a label count (the causal shift: position t
    predicts label t + 1, and labels of -100 are padding). `num_items` divides the sum instead of this micro-batch's
    count, as `Trainer` does for the task loss across gradient accumulation.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ; "
            "the teacher must be the same model."
        )
    student, teacher = student_logits[..., :-1, :], teacher_logits[..., :-1, :]
    if labels is None:
        weights = torch.ones(student.shape[:-1], device=student.device)
    else:
        weights = (labels[..., 1:] != -100).to(device=student.device, dtype=torch.float32)
    count = weights.sum() if num_items is None else torch.as_tensor(num_items, device=student.device)
    weights = weights / count.clamp(min=1).float()
    return _TokenKL.apply(student, teacher.detach(), weights, float(temperature))


class Teacher:
    """The frozen starting model, whose logits the trained model is pulled toward.

    With a `PeftModel` the teacher is the same model with its adapters disabled; otherwise a deep copy of the model
    as it is now (call before training), frozen, in eval mode, in `dtype` if given.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype | None = None):
        model = getattr(model, "_orig_mod", model)
        self.peft = isinstance(model, PeftModel)
        if self.peft:
            self.model = model
        else:
            copied = copy.deepcopy(base_model(model)).eval()
            copied.requires_grad_(False)
            self.model = copied.to(dtype) if dtype is not None else copied

    def to(self, device: torch.device | str) -> Teacher:
        if not self.peft:
            self.model.to(device)
        return self

    @torch.no_grad()
    def logits(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The teacher's logits for a batch of model inputs (labels are not passed: no loss is computed)."""
        kwargs = {k: v for k, v in inputs.items() if k != "labels"}
        model = self.model
        was_training = model.training
        model.eval()  # no dropout in the teacher
        try:
            context = model.disable_adapter() if self.peft else nullcontext()
            with context:
                return model(**kwargs).logits
        finally:
            model.train(was_training)
