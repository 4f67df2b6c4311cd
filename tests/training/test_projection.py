import pytest
import torch
from peft import LoraConfig, get_peft_model

from hf_clusterable import ClusterConfig, measure
from hf_clusterable.modeling.clusters import cluster_model
from hf_clusterable.modeling.targets import find_targets, get_weight, modules_by_name
from hf_clusterable.training.projection import cut_off_block, in_block_mask, project_off_block
from hf_clusterable.training.trainer import ClusterableTrainer
from tests.testing_utils import make_args, pattern_data, random_tokens, tiny_model


def clusters(model, coupled=True):
    config = ClusterConfig(coupled=coupled)
    targets = find_targets(model, coupled=coupled)
    return targets, cluster_model(model, config, targets)


@pytest.mark.parametrize("model_type", ["gpt2", "llama"])  # GPT-2's Conv1D stores the transpose
@pytest.mark.parametrize("coupled", [True, False])
def test_projection_makes_clusterability_exactly_one_and_keeps_in_block_weights(model_type, coupled):
    model = tiny_model(model_type)
    targets, partitions = clusters(model, coupled)
    modules = modules_by_name(model)
    before = {t.name: get_weight(modules[t.name]).detach().clone() for t in targets}
    project_off_block(model, targets, partitions)
    assert measure(model, partitions).mean == 1.0
    for t in targets:
        mask = in_block_mask(partitions[t.name])
        after = get_weight(modules[t.name])
        assert torch.equal(after[mask], before[t.name][mask])
        assert not after[~mask].any()


def test_cut_test_restores_the_weights_bit_for_bit():
    model = tiny_model("llama")
    targets, partitions = clusters(model)
    x = random_tokens(2)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        full = model(x).logits
        with cut_off_block(model, targets, partitions):
            assert measure(model, partitions).mean == 1.0
            cut = model(x).logits
        again = model(x).logits
    assert not torch.equal(full, cut)
    assert torch.equal(full, again)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_projection_refuses_active_lora_adapters():
    model = get_peft_model(tiny_model("llama"), LoraConfig(target_modules=["up_proj"], init_lora_weights=False))
    targets, partitions = clusters(model)
    with pytest.raises(ValueError, match="merge"):
        project_off_block(model, targets, partitions)


def test_trainer_refuses_lora_projection_before_its_first_step(tmp_path):
    model = get_peft_model(tiny_model("llama"), LoraConfig(target_modules=["up_proj"], init_lora_weights=False))
    trainer = ClusterableTrainer(
        model=model, args=make_args(tmp_path, max_steps=6, save_strategy="steps", save_steps=1),
        train_dataset=pattern_data(), cluster_config=ClusterConfig(loss_weight=1.0, project_step=3),
    )  # fmt: skip
    with pytest.raises(ValueError, match="active LoRA adapters; merge them"):
        trainer.train()
    assert trainer.state.global_step == 0 and not list(tmp_path.glob("**/checkpoint-*"))


def test_trainer_projects_at_project_step_and_keeps_off_block_weights_zero(tmp_path):
    config = ClusterConfig(loss_weight=1.0, project_step=3)
    trainer = ClusterableTrainer(
        model=tiny_model("llama"), args=make_args(tmp_path, max_steps=6, logging_steps=1),
        train_dataset=pattern_data(), cluster_config=config,
    )  # fmt: skip
    seen = []
    trainer.add_callback(_Record(trainer, seen))
    trainer.train()
    assert [step for step, mean in seen if mean == 1.0] == [3, 4, 5, 6]
    assert seen[1][1] < 1.0  # before the projection
    saved = trainer.partitions
    assert trainer.cluster_report().mean == 1.0 and trainer.partitions is saved  # clusters unchanged


class _Record:
    """Clusterability after each step (callbacks run in order: the projection's comes first)."""

    def __init__(self, trainer, seen):
        self.trainer, self.seen = trainer, seen

    def __getattr__(self, name):
        if name == "on_step_end":
            return self._end
        return lambda *args, **kwargs: None

    def _end(self, args, state, control, **kwargs):
        self.seen.append((state.global_step, self.trainer.cluster_report().mean))


def test_project_step_must_follow_the_clustering():
    with pytest.raises(ValueError, match="project_step"):
        ClusterConfig(cluster_step=5, project_step=5)
    with pytest.raises(ValueError, match="project_step"):
        ClusterConfig(project_step=0)


def test_projection_clears_the_optimizer_state_once(tmp_path):
    """The heal starts with fresh Adam moments: after 6 steps with projection at step 4, Adam has counted 2."""
    trainer = ClusterableTrainer(
        model=tiny_model("llama"), args=make_args(tmp_path, max_steps=6, logging_steps=1),
        train_dataset=pattern_data(), cluster_config=ClusterConfig(loss_weight=100.0, project_step=4),
    )  # fmt: skip
    trainer.train()
    steps = {float(s["step"]) for s in trainer.optimizer.state.values()}
    assert steps == {2.0}
