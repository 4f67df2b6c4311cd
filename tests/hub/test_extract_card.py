"""The extracted cluster's card: a Hub source becomes `base_model`, the YAML block and the text agree."""

import yaml
from huggingface_hub import ModelCard

from hf_clusterable import extract_cluster
from hf_clusterable.hub.extract_card import render_extract_card, write_extract_card
from hf_clusterable.modeling.extract import describe_cluster
from tests.testing_utils import random_partitions, tiny_model


def test_card_names_source_cluster_size_and_scores(tmp_path):
    model = tiny_model("gpt2")
    partitions = random_partitions(model, k=4, seed=3)
    size = describe_cluster(model, partitions, 2)
    extracted = extract_cluster(model, partitions, 2)
    evaluation = {"task": "causal-lm", "n_examples": 10, "alone_loss": 3.5, "alone_accuracy": 0.1, "full_loss": 2.0,
                  "full_accuracy": 0.3, "without_loss": 2.25, "without_accuracy": 0.2}  # fmt: skip
    card = render_extract_card(
        extracted,
        size,
        source="org/clustered-gpt2",
        source_parameters=sum(p.numel() for p in model.parameters()),
        width_field="n_inner",
        model_name="gpt2-cluster-2",
        repo_id="org/gpt2-cluster-2",
        evaluation=evaluation,
    )
    assert card.data.base_model == "org/clustered-gpt2" and card.data.pipeline_tag == "text-generation"
    block = card.data.extracted_cluster
    assert block["cluster"] == 2 and block["n_clusters"] == 4 and block["neurons_per_mlp"] == list(size.neurons)
    assert block["evaluation"]["alone_loss"] == 3.5
    assert "[org/clustered-gpt2](https://huggingface.co/org/clustered-gpt2)" in card.text
    assert f"| MLP width (`n_inner`) | {size.intermediate_size} (source: 96)" in card.text
    assert f"{size.padding} zero neurons pad the narrower layers" in card.text
    assert "| this cluster alone | 3.5000 | 0.1000 |" in card.text
    assert 'AutoModelForCausalLM.from_pretrained("org/gpt2-cluster-2")' in card.text

    write_extract_card(tmp_path, extracted, size, source=str(tmp_path), source_parameters=1, width_field="n_inner",
                       model_name="local")  # fmt: skip
    written = ModelCard.load(tmp_path / "README.md")
    assert written.data.base_model is None and "Held-out" not in written.text
    assert yaml.safe_load(str(written).split("---")[1])["extracted_cluster"]["source"] == str(tmp_path)
