"""`extract_cluster`: an extracted cluster computes exactly what the full model computes with every other cluster
silenced, on every architecture family, before and after a save/reload round trip; bad input fails in one line."""

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM

from hf_clusterable import ClusterConfig, Partition, extract_cluster, find_targets
from hf_clusterable.modeling.clusters import save_clusters
from hf_clusterable.modeling.extract import describe_cluster
from tests.testing_utils import random_partitions, random_tokens, requires_gguf, shake, silence_others, tiny_model


FAMILIES = ["gpt2", "gpt_neox", "llama", "mistral", "qwen2", "gemma", "gemma3_text"]
TOLERANCE = 1e-5


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def check_equal_to_silenced(model_type, extracted, partitions, cluster, ids, **overrides):
    reference = silence_others(shake(tiny_model(model_type, **overrides)), partitions, cluster)
    full = logits(shake(tiny_model(model_type, **overrides)), ids)
    ours, silenced = logits(extracted, ids), logits(reference, ids)
    assert (ours - silenced).abs().max() < TOLERANCE
    assert (full - silenced).abs().max() > 0.1  # silencing matters, so the equality above can fail


@pytest.mark.parametrize("model_type", FAMILIES)
def test_extracted_cluster_equals_full_model_with_other_clusters_silenced(model_type, tmp_path):
    model = shake(tiny_model(model_type))
    partitions = random_partitions(model, k=3)
    ids = random_tokens(3, 12)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for cluster in range(3):
        extracted = extract_cluster(model, partitions, cluster)
        assert type(extracted) is type(model)
        size = describe_cluster(model, partitions, cluster)
        width = extracted.config.get_text_config()
        assert getattr(width, "n_inner" if model_type == "gpt2" else "intermediate_size") == size.intermediate_size
        assert size.padding > 0  # random labels: layers differ, so the narrower ones are padded
        check_equal_to_silenced(model_type, extracted, partitions, cluster, ids)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the source is untouched

    extracted.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert (logits(reloaded, ids) - logits(extracted, ids)).abs().max() < TOLERANCE
    check_equal_to_silenced(model_type, reloaded, partitions, 2, ids)


def test_gated_mlp_with_biases_pads_with_silent_neurons():
    # Llama with mlp_bias: a padded neuron's gate and up biases are zero, and its down column is zero.
    model = shake(tiny_model("llama", mlp_bias=True))
    partitions = random_partitions(model, k=4, seed=1)
    extracted = extract_cluster(model, partitions, 1)
    check_equal_to_silenced("llama", extracted, partitions, 1, random_tokens(3, 12), mlp_bias=True)
    mlp = extracted.model.layers[0].mlp
    assert mlp.intermediate_size == mlp.up_proj.out_features == extracted.config.intermediate_size


def test_gpt2_gelu_of_a_bias_is_not_zero_but_padding_still_contributes_nothing():
    model = shake(tiny_model("gpt2"))
    partitions = {}
    for t in find_targets(model):  # cluster 1 has 6 hidden neurons in layer 0 and 40 in layer 1
        hidden = torch.tensor([0] * 90 + [1] * 6) if ".h.0." in t.name else torch.tensor([0] * 56 + [1] * 40)
        p = Partition(hidden, torch.arange(32) % 2, 2)
        partitions[t.name] = p.T if t.transposed else p
    extracted = extract_cluster(model, partitions, 1)
    assert extracted.config.n_inner == 40 and extracted.transformer.h[0].mlp.c_fc.nf == 40
    assert torch.equal(extracted.transformer.h[0].mlp.c_proj.weight[6:], torch.zeros(34, 32))  # Conv1D: (in, out)
    check_equal_to_silenced("gpt2", extracted, partitions, 1, random_tokens(3, 12))


def test_gemma3_multimodal_model_resizes_its_text_config():
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    from tests.testing_utils import TINY_CONFIGS

    config = Gemma3Config(
        text_config=TINY_CONFIGS["gemma3_text"],
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=28, patch_size=14),
        mm_tokens_per_image=4, image_token_index=60, boi_token_index=61, eoi_token_index=62,
    )  # fmt: skip
    torch.manual_seed(0)
    model = shake(Gemma3ForConditionalGeneration(config).eval())
    partitions = random_partitions(model, k=2)
    extracted = extract_cluster(model, partitions, 0)
    assert extracted.config.vision_config.intermediate_size == 32  # the vision tower is not clustered
    assert extracted.config.text_config.intermediate_size == describe_cluster(model, partitions, 0).intermediate_size
    torch.manual_seed(0)
    reference = silence_others(shake(Gemma3ForConditionalGeneration(config).eval()), partitions, 0)
    ids = random_tokens(2, 8)
    assert (logits(extracted, ids) - logits(reference, ids)).abs().max() < TOLERANCE


def test_peft_model_is_merged_into_a_copy_first():
    from peft import LoraConfig, get_peft_model

    base = shake(tiny_model("gpt2"))
    peft = get_peft_model(
        base, LoraConfig(r=2, target_modules=["c_fc", "c_attn"], fan_in_fan_out=True, init_lora_weights=False)
    )
    partitions = random_partitions(base, k=3)
    before = {k: v.clone() for k, v in peft.state_dict().items()}
    extracted = extract_cluster(peft, partitions, 2)
    assert type(extracted).__name__ == "GPT2LMHeadModel" and not hasattr(extracted, "peft_config")
    merged = silence_others(copy.deepcopy(peft).merge_and_unload(), partitions, 2)
    ids = random_tokens(3, 12)
    assert (logits(extracted, ids) - logits(merged, ids)).abs().max() < TOLERANCE
    assert all(torch.equal(before[k], v) for k, v in peft.state_dict().items())


def test_checkpoint_folder_and_share(tmp_path):
    model = shake(tiny_model("gpt_neox"))
    config = ClusterConfig(n_clusters=4, init="blocks")
    model.save_pretrained(tmp_path)
    config.save_pretrained(tmp_path)
    from hf_clusterable.modeling.measure import resolve_clusters

    _, _, partitions = resolve_clusters(model, config)
    save_clusters(tmp_path, partitions)
    size = describe_cluster(model, tmp_path, 3)
    assert size.neurons == (24, 24) and size.intermediate_size == 24 and size.padding == 0
    assert size.share == pytest.approx(0.25)
    extracted = extract_cluster(model, str(tmp_path), 3)
    check_equal_to_silenced("gpt_neox", extracted, partitions, 3, random_tokens(3, 12))
    n_params = sum(p.numel() for p in extracted.parameters())
    assert n_params < sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("cluster,message", [(3, "out of range: the model has k = 3"), (-1, ">= 0"), (True, ">= 0")])
def test_cluster_out_of_range(cluster, message):
    model = tiny_model("gpt2")
    with pytest.raises(ValueError, match=message):
        extract_cluster(model, random_partitions(model, k=3), cluster)


def test_per_matrix_clusters_are_refused(tmp_path):
    model = tiny_model("gpt2")
    per_matrix = ClusterConfig(n_clusters=2, coupled=False, init="blocks")
    with pytest.raises(ValueError, match="clustered on its own.*coupled clusters"):
        extract_cluster(model, per_matrix, 0)
    partitions = random_partitions(model, k=2)  # relabel one matrix alone: up and down now disagree
    name = "transformer.h.1.mlp.c_fc"
    partitions[name] = Partition(1 - partitions[name].row_labels, partitions[name].col_labels, 2)
    with pytest.raises(ValueError, match="label the hidden neurons of transformer.h.1 differently"):
        extract_cluster(model, partitions, 0)


def test_empty_cluster_and_mismatched_partitions_are_refused():
    model = tiny_model("llama")
    partitions = random_partitions(model, k=3)
    for t in find_targets(model):  # no hidden neuron carries label 2
        p = partitions[t.name]
        partitions[t.name] = Partition(p.row_labels.clamp(max=1), p.col_labels.clamp(max=1), 3)
    with pytest.raises(ValueError, match="cluster 2 has no hidden neuron"):
        extract_cluster(model, partitions, 2)
    with pytest.raises(ValueError, match="does not match this model"):
        extract_cluster(tiny_model("llama", intermediate_size=64), random_partitions(model), 0)


@pytest.mark.slow
@requires_gguf
def test_real_gemma3_270m_cluster_equals_silenced_to_float32_rounding():
    from hf_clusterable.examples.offline import load_gemma3_270m
    from hf_clusterable.modeling.measure import resolve_clusters

    model = load_gemma3_270m().eval()
    _, _, partitions = resolve_clusters(model, ClusterConfig(n_clusters=4))
    ids = torch.randint(0, 20000, (1, 16), generator=torch.Generator().manual_seed(0))
    extracted = extract_cluster(model, partitions, 1)
    assert extracted.config.intermediate_size < model.config.intermediate_size
    ours = logits(extracted, ids)
    del extracted
    silenced = logits(silence_others(model, partitions, 1), ids)
    assert (ours - silenced).abs().max() < 1e-5 * silenced.abs().max()  # measured: 3.4e-4 at magnitude 82
