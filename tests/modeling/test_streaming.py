import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from hf_clusterable import ClusterConfig, Partition, measure, save_clusters
from hf_clusterable.modeling import streaming
from hf_clusterable.modeling.loading import load_model
from hf_clusterable.modeling.streaming import DiskWeights, open_model, read_fp32, streamable
from hf_clusterable.modeling.targets import get_weight
from tests.testing_utils import tiny_model


CONFIGS = {
    "coupled-spectral": ClusterConfig(),
    "per-matrix-spectral": ClusterConfig(coupled=False, n_clusters=3),
    "coupled-blocks": ClusterConfig(init="blocks"),
}


def assert_same_report(streamed, loaded):
    assert streamed.to_dict() == loaded.to_dict()  # names, shapes, scores and baselines, to the last bit
    assert list(streamed.partitions) == list(loaded.partitions)
    assert all(streamed.partitions[n] == loaded.partitions[n] for n in loaded.partitions)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny checkpoint per architecture: Conv1D (GPT-2), gated MLPs (Llama, Gemma), GPT-NeoX; Llama in bf16."""
    folders = {}
    for model_type in ("gpt2", "llama", "gemma", "gpt_neox"):
        folder = tmp_path_factory.mktemp(model_type)
        model = tiny_model(model_type)
        (model.to(torch.bfloat16) if model_type == "llama" else model).save_pretrained(folder)
        folders[model_type] = folder
    return folders


@pytest.mark.parametrize("config", list(CONFIGS), ids=list(CONFIGS))
@pytest.mark.parametrize("model_type", ["gpt2", "llama", "gemma", "gpt_neox"])
def test_streamed_report_is_the_loaded_models(saved, model_type, config):
    folder = saved[model_type]
    assert streamable(folder)
    assert_same_report(measure(folder, CONFIGS[config]), measure(load_model(folder), CONFIGS[config]))


def test_saved_clusters_in_the_folder_are_used(tmp_path):
    model = tiny_model("gpt2")
    model.save_pretrained(tmp_path)
    config = ClusterConfig(model_type="gpt2")
    config.save_pretrained(tmp_path)
    parts = measure(model, config).partitions
    name = "transformer.h.0.mlp.c_fc"
    parts[name] = Partition(torch.arange(96) % 4, torch.arange(32) % 4, 4)
    parts["transformer.h.0.mlp.c_proj"] = parts[name].T
    save_clusters(tmp_path, parts)
    streamed = measure(tmp_path, tmp_path)
    assert streamed.partitions[name] == parts[name]
    assert_same_report(streamed, measure(load_model(tmp_path), tmp_path))


def test_base_model_checkpoint_shards_and_tied_head(tmp_path):
    # A GPT2Model checkpoint stores `h.0...` for the causal LM's `transformer.h.0...`; lm_head is tied to wte.
    tiny_model("gpt2").transformer.save_pretrained(tmp_path / "base", max_shard_size="20KB")
    assert (tmp_path / "base" / "model.safetensors.index.json").is_file()
    assert (
        "h.0.mlp.c_fc.weight"
        in json.loads((tmp_path / "base" / "model.safetensors.index.json").read_text())["weight_map"]
    )
    config = ClusterConfig(targets=["lm_head", "mlp.c_fc", "mlp.c_proj"], coupled=False)
    streamed = measure(tmp_path / "base", config)
    assert_same_report(streamed, measure(load_model(str(tmp_path / "base")), config))
    assert streamed.rows[-1].name == "lm_head"


def test_weights_are_read_one_at_a_time_and_the_model_never_built(saved, monkeypatch):
    reads = []
    original = DiskWeights.__getitem__

    def counting(self, name):
        reads.append(name)
        return original(self, name)

    monkeypatch.setattr(DiskWeights, "__getitem__", counting)
    weights = DiskWeights(saved["llama"])
    assert all(p.device.type == "meta" for p in weights.model.parameters())
    report = measure(weights, ClusterConfig())
    names = [r.name for r in report.rows]
    assert sorted(reads) == sorted(names * 2)  # each matrix read once to co-cluster, once to score, nothing else
    reads.clear()
    measure(weights, ClusterConfig(init="blocks"))
    assert sorted(reads) == sorted(names)
    loaded = load_model(saved["llama"])
    up = "model.layers.1.mlp.up_proj"
    assert weights[up].dtype == torch.float32
    assert torch.equal(weights[up], get_weight(loaded.get_submodule(up)).float())
    assert list(weights.select([up])) == [up] and "lm_head" in weights and "nothing" not in weights


def test_conv1d_weights_come_transposed(saved):
    weights, loaded = DiskWeights(saved["gpt2"]), load_model(saved["gpt2"])
    name = "transformer.h.0.mlp.c_fc"
    assert weights[name].shape == (96, 32)
    assert weights[name].stride() == get_weight(loaded.get_submodule(name)).stride()
    assert torch.equal(weights[name], get_weight(loaded.get_submodule(name)))


def test_blocks_of_rows_are_read_exactly(tmp_path):
    tensor = torch.randn(37, 11).to(torch.bfloat16)
    save_file({"w": tensor}, tmp_path / "x.safetensors")
    for block in (1, 11, 12, 10_000):
        assert torch.equal(read_fp32(tmp_path / "x.safetensors", "w", (37, 11), block_elements=block), tensor.float())


def test_other_sources_are_loaded(tmp_path, monkeypatch):
    loaded = []
    monkeypatch.setattr(streaming, "load_model", lambda name, gguf_file=None: loaded.append(name) or "model")
    assert open_model("org/name") == "model" and loaded == ["org/name"]
    tiny_model("gpt2").save_pretrained(tmp_path)
    assert not streamable(tmp_path, gguf_file="model.gguf")
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "quantization_config": {"quant_method": "gptq"}}))
    assert not streamable(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    assert not streamable(tmp_path)


def test_weights_that_do_not_fit_the_config_are_one_clear_error(tmp_path):
    tiny_model("gpt2").save_pretrained(tmp_path / "short")
    folder = tmp_path / "short"
    state = load_file(folder / "model.safetensors")
    state.pop("transformer.h.1.mlp.c_fc.weight")
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"holds no tensor for transformer\.h\.1\.mlp\.c_fc\.weight"):
        measure(folder)
    tiny_model("gpt2", n_inner=64).save_pretrained(tmp_path / "wide")
    config = json.loads((tmp_path / "wide" / "config.json").read_text())
    (tmp_path / "wide" / "config.json").write_text(json.dumps({**config, "n_inner": 96}))
    with pytest.raises(ValueError, match="the config does not match the weights"):
        measure(tmp_path / "wide")
    (folder / "model.safetensors.index.json").write_text("{not json")
    with pytest.raises(ValueError, match="could not read the shard index"):
        DiskWeights(folder)
