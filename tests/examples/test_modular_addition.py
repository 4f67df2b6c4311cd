import numpy as np
import pytest
import torch

from hf_clusterable import modular_addition_model
from hf_clusterable.examples.datasets import digits
from hf_clusterable.examples.modular_addition import modular_addition, modular_addition_accuracy


def test_modular_addition_split_covers_every_pair_once():
    ds = modular_addition(p=13, train_fraction=0.3, seed=1)
    ids = np.concatenate([np.asarray(ds[s]["input_ids"]) for s in ("train", "test")])
    assert len(ids) == 169 and len({tuple(r[:2]) for r in ids}) == 169
    assert len(ds["train"]) == round(0.3 * 169)
    assert np.all(ids[:, 3] == (ids[:, 0] + ids[:, 1]) % 13) and np.all(ids[:, 2] == 13)
    labels = np.asarray(ds["train"]["labels"])
    assert np.all(labels[:, :3] == -100) and np.all(labels[:, 3] == np.asarray(ds["train"]["input_ids"])[:, 3])
    with pytest.raises(ValueError, match="train_fraction"):
        modular_addition(train_fraction=1.0)


def test_modular_addition_loss_is_the_prediction_at_equals_and_does_not_leak():
    model = modular_addition_model(p=13, d_model=32, n_heads=2, d_mlp=32).eval()
    ds = modular_addition(p=13)
    ids = torch.tensor(ds["train"]["input_ids"][:8])
    labels = torch.tensor(ds["train"]["labels"][:8])
    out = model(input_ids=ids, labels=labels)
    expected = torch.nn.functional.cross_entropy(out.logits[:, 2], ids[:, 3])
    torch.testing.assert_close(out.loss, expected)
    changed = ids.clone()
    changed[:, 3] = (changed[:, 3] + 1) % 13
    torch.testing.assert_close(model(input_ids=changed).logits[:, :3], out.logits[:, :3])  # answer never seen


def test_accuracy_metric_and_digits():
    labels = np.array([[-100, -100, -100, 4], [-100, -100, -100, 7]])
    assert modular_addition_accuracy((np.array([4, 1]), labels)) == {"accuracy": 0.5}
    ds = digits(seed=0)
    assert len(ds["train"]) + len(ds["test"]) == 1797
    x = ds["train"][0]["pixel_values"]
    assert tuple(x.shape) == (1, 8, 8) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
