import torch
from transformers import AutoConfig, AutoModelForImageClassification

from hf_clusterable import ClusterNetConfig, ClusterNetForImageClassification, find_targets, modular_addition_model
from hf_clusterable.examples.models import register_auto_classes


def test_mlp_and_cnn_forward_shapes_and_loss():
    mlp = ClusterNetForImageClassification(ClusterNetConfig(image_size=8, hidden_sizes=[32, 16]))
    out = mlp(torch.rand(5, 1, 8, 8), labels=torch.tensor([0, 1, 2, 3, 4]))
    assert out.logits.shape == (5, 10) and out.loss.ndim == 0
    cnn = ClusterNetForImageClassification(ClusterNetConfig(image_size=32, num_channels=3, conv_channels=[8, 16]))
    assert cnn(torch.rand(2, 3, 32, 32)).logits.shape == (2, 10)
    assert cnn.hidden[0].in_features == 16 * 8 * 8


def test_registered_with_auto_classes_and_default_targets(tmp_path):
    register_auto_classes()  # on demand, not on import: this test passed only after another test had registered
    model = ClusterNetForImageClassification(ClusterNetConfig(image_size=8, hidden_sizes=[32, 16]))
    model.save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), ClusterNetConfig)
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path)
    torch.testing.assert_close(reloaded.classifier.weight, model.classifier.weight)
    names = [t.name for t in find_targets(reloaded)]
    assert names == ["hidden.0", "hidden.1", "classifier"]  # FC layers only, each on its own
    assert {t.group for t in find_targets(reloaded)} == set(names)


def test_modular_addition_model_is_the_papers_shape():
    model = modular_addition_model(p=113)
    assert model.config.n_layer == 1 and model.config.n_embd == 128 and model.config.n_inner == 128
    targets = find_targets(model)
    assert [t.shape for t in targets] == [(128, 128), (128, 128)]
    assert model(torch.tensor([[1, 2, 113, 3]])).logits.shape == (1, 4, 114)
