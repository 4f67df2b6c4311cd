import pytest
import torch
from torch import nn

from hf_clusterable import Partition, find_targets
from hf_clusterable.training.loss import ClusterabilityLoss


def _model_with_zeroed_target(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    with torch.no_grad():
        model[0].weight.zero_()  # zero-initialised (or fully pruned) target
    return model


def _loss(model: nn.Sequential) -> ClusterabilityLoss:
    targets = find_targets(model, targets=["0", "2"], coupled=False)
    return ClusterabilityLoss(model, targets, {t.name: Partition.blocks(*t.shape, 2) for t in targets})


@pytest.mark.parametrize("capture", [True, False])
def test_zeroed_target_leaves_training_finite_and_unaffected(capture):
    """A zero matrix used to score C = inside / tiny and, with loss_weight 20, turn every parameter into NaN."""
    model = _model_with_zeroed_target()
    reg = _loss(model)
    x, y = torch.randn(32, 8, generator=torch.Generator().manual_seed(1)), torch.randint(0, 4, (32,))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(2):  # the second step sees the first step's tiny, no longer zero weights
        if capture:
            with reg.capture():
                task = nn.functional.cross_entropy(model(x), y)
        else:
            task = nn.functional.cross_entropy(model(x), y)
        scores = reg.scores()
        (task + 20.0 * (1 - scores.mean())).backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters()}
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # what the Trainer does; one inf made all NaN
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        assert all(torch.isfinite(p).all() for p in model.parameters())
        assert all(torch.isfinite(g).all() for g in grads.values())
    # the zero matrix itself scored 1 at the first step, with no regulariser gradient: only the task moved it
    fresh = _model_with_zeroed_target()
    reg = _loss(fresh)
    assert float(reg.scores()[0]) == 1.0
    task = nn.functional.cross_entropy(fresh(x), y)
    (task + 20.0 * (1 - reg.scores()[0])).backward()
    (task_grad,) = torch.autograd.grad(nn.functional.cross_entropy(fresh(x), y), [fresh[0].weight])
    torch.testing.assert_close(fresh[0].weight.grad, task_grad)
