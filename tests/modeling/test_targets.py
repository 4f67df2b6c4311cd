import pytest
import torch
from peft import LoraConfig, get_peft_model

from hf_clusterable import ClusterConfig, find_targets, get_weight
from hf_clusterable.constants import TRANSFORMERS_MODELS_TO_CLUSTER_TARGETS
from hf_clusterable.modeling.clusters import cluster_model
from hf_clusterable.modeling.targets import base_model
from tests.testing_utils import TINY_CONFIGS, tiny_model


@pytest.mark.parametrize("model_type", sorted(TINY_CONFIGS))
def test_every_registered_matrix_is_read_as_out_by_in(model_type):
    model = tiny_model(model_type)
    targets = find_targets(model)
    layers = 2
    assert len(targets) == layers * len(TRANSFORMERS_MODELS_TO_CLUSTER_TARGETS[model_type])
    modules = dict(model.named_modules())
    for t in targets:
        module = modules[t.name]
        w = get_weight(module)
        assert tuple(w.shape) == t.shape
        # orientation check through the module itself: y = x @ W.T + b
        x = torch.randn(3, t.shape[1])
        bias = getattr(module, "bias", None)
        expected = x @ w.T + (bias if bias is not None else 0)
        torch.testing.assert_close(module(x), expected, rtol=1e-4, atol=1e-5)
        # views, not copies: the model is never duplicated
        assert w.data_ptr() == module.weight.data_ptr()


@pytest.mark.parametrize("model_type", ["gpt2", "gpt_neox", "gemma", "llama"])
def test_coupled_labels_agree_across_a_layer(model_type):
    model = tiny_model(model_type)
    config = ClusterConfig(n_clusters=3, init="spectral")
    targets = find_targets(model, coupled=True, n_clusters=3)
    parts = cluster_model(model, config, targets)
    by_group = {}
    for t in targets:
        p = parts[t.name].T if t.transposed else parts[t.name]
        by_group.setdefault(t.group, []).append(p)
    assert len(by_group) == 2
    for members in by_group.values():
        assert len(members) >= 2
        assert all(m == members[0] for m in members)  # hidden and residual labels shared by up/gate/down


def test_per_matrix_mode_clusters_each_matrix_alone():
    targets = find_targets(tiny_model("gpt2"), coupled=False)
    assert len({t.group for t in targets}) == len(targets)
    assert not any(t.transposed for t in targets)


def test_user_targets_suffix_and_regex():
    model = tiny_model("gpt2")
    names = [t.name for t in find_targets(model, ["attn.c_attn"])]
    assert names == ["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"]
    names = [t.name for t in find_targets(model, r"transformer\.h\.1\.mlp\..*")]
    assert names == ["transformer.h.1.mlp.c_fc", "transformer.h.1.mlp.c_proj"]


def test_unknown_model_type_needs_explicit_targets():
    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList([torch.nn.Linear(8, 8) for _ in range(3)])

    with pytest.raises(ValueError, match=r"no default targets.*blocks\.N"):
        find_targets(Tiny())
    assert len(find_targets(Tiny(), ["blocks.1"])) == 1


def test_targets_matching_nothing_list_candidates():
    with pytest.raises(ValueError, match=r"match no module.*transformer\.h\.N\.mlp\.c_fc"):
        find_targets(tiny_model("gpt2"), ["mlp.up_proj"])


def test_k_checked_against_every_matrix():
    with pytest.raises(ValueError, match="smaller side"):
        find_targets(tiny_model("gpt2"), n_clusters=33)


def test_lora_effective_weight_and_gradient_reach_adapters():
    model = tiny_model("gpt2")
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["c_fc"], init_lora_weights=False))
    targets = find_targets(peft_model)
    assert [t.name for t in targets][:2] == ["transformer.h.0.mlp.c_fc", "transformer.h.0.mlp.c_proj"]
    module = dict(base_model(peft_model).named_modules())["transformer.h.0.mlp.c_fc"]
    w = get_weight(module)
    base = module.base_layer.weight.T
    assert w.shape == base.shape and not torch.allclose(w, base)  # W + delta, not the frozen base
    w.square().sum().backward()
    assert module.lora_A["default"].weight.grad is not None
    assert module.base_layer.weight.grad is None


def finishes_within(seconds: float, fn, *args):
    """Run `fn(*args)` in a forked process and re-raise its error here as a ValueError (or return None), failing
    the test if it is still running after `seconds`. A hang in Python's `re` holds the GIL, so no thread or signal
    could stop it; a process can be killed."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    queue = context.SimpleQueue()

    def call():
        try:
            fn(*args)
            queue.put(None)
        except BaseException as err:  # handed back to the test as its type name and message
            queue.put((type(err).__name__, str(err)))

    child = context.Process(target=call, daemon=True)
    child.start()
    child.join(seconds)
    if child.is_alive():
        child.kill()
        child.join()
        pytest.fail(f"{fn.__name__} still running after {seconds} s")
    outcome = queue.get() if not queue.empty() else ("died", f"exit code {child.exitcode}")
    if outcome is not None:
        kind, message = outcome
        assert kind == "ValueError", f"{kind}: {message}"
        raise ValueError(message)


def test_nested_repeat_regex_from_a_downloaded_config_fails_fast():
    # (.*.*)*X backtracks exponentially in Python's re on any name without an X
    with pytest.raises(ValueError, match="match no module"):
        finishes_within(20, find_targets, tiny_model("llama"), "(.*.*)*X")


def test_regex_that_backtracks_on_every_name_runs_out_of_time(monkeypatch):
    monkeypatch.setattr("hf_clusterable.modeling.targets.REGEX_SECONDS", 0.3)
    model = tiny_model("llama")  # names like model.layers.0.self_attn.q_proj: (.|..)* has ~1.6^31 ways to split them
    with pytest.raises(ValueError, match=r"took more than .* simplify it") as err:
        finishes_within(30, find_targets, model, "(.|..)*[A-Z]")
    assert "(.|..)*[A-Z]" in str(err.value)


def test_malformed_regex_is_named():
    with pytest.raises(ValueError, match=r"targets '\(mlp' is not a valid regex"):
        find_targets(tiny_model("gpt2"), "(mlp")
