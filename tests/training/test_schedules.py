import math

import pytest

from hf_clusterable import ClusterConfig
from hf_clusterable.training.schedules import loss_weight_at, scheduled_weight


def test_constant_is_the_weight_from_the_start_on():
    assert [scheduled_weight(20.0, s, 3, 10) for s in (0, 2, 3, 50)] == [0.0, 0.0, 20.0, 20.0]
    assert scheduled_weight(20.0, 5, 0, 0, "linear") == 20.0  # no ramp length: constant


def test_linear_ramp_values():
    values = [scheduled_weight(100.0, s, 10, 40, "linear") for s in (0, 9, 10, 20, 30, 50, 51, 1000)]
    assert values == [0.0, 0.0, 0.0, 25.0, 50.0, 100.0, 100.0, 100.0]


def test_cosine_ramp_values():
    assert scheduled_weight(100.0, 10, 10, 40, "cosine") == 0.0
    assert scheduled_weight(100.0, 30, 10, 40, "cosine") == pytest.approx(50.0)
    assert scheduled_weight(100.0, 20, 10, 40, "cosine") == pytest.approx(50.0 * (1 - math.cos(math.pi / 4)))
    assert scheduled_weight(100.0, 50, 10, 40, "cosine") == pytest.approx(100.0)
    assert scheduled_weight(100.0, 99, 10, 40, "cosine") == 100.0


def test_ramps_rise_monotonically():
    for kind in ("linear", "cosine"):
        values = [scheduled_weight(7.0, s, 0, 13, kind) for s in range(20)]
        assert values == sorted(values) and values[-1] == 7.0


def test_config_schedule_starts_after_the_warm_up():
    config = ClusterConfig(loss_weight=8.0, cluster_step=4, loss_weight_schedule="linear", loss_weight_warmup_steps=4)
    assert [loss_weight_at(config, s) for s in range(10)] == [0, 0, 0, 0, 0, 2, 4, 6, 8, 8]
    blocks = ClusterConfig(loss_weight=8.0, init="blocks", cluster_step=4, loss_weight_schedule="linear",
                           loss_weight_warmup_steps=4)  # fmt: skip
    assert loss_weight_at(blocks, 2) == 4.0  # fixed blocks apply from step 0


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="loss_weight_schedule"):
        ClusterConfig(loss_weight_schedule="step")
    with pytest.raises(ValueError, match="unknown"):
        scheduled_weight(1.0, 1, 0, 5, "step")


def test_trainer_logs_the_ramped_weight_each_step(tmp_path):
    from hf_clusterable.training.trainer import ClusterableTrainer
    from tests.testing_utils import make_args, pattern_data, tiny_model

    config = ClusterConfig(loss_weight=30.0, cluster_step=2, loss_weight_schedule="linear", loss_weight_warmup_steps=3)
    trainer = ClusterableTrainer(
        model=tiny_model("llama"), args=make_args(tmp_path, max_steps=7, logging_steps=1),
        train_dataset=pattern_data(), cluster_config=config,
    )  # fmt: skip
    trainer.train()
    logs = [e for e in trainer.state.log_history if "task_loss" in e]
    # log entry i is step i + 1, whose loss used the weight of global_step i
    assert [e["cluster_loss_weight"] for e in logs] == [0.0, 0.0, 0.0, 10.0, 20.0, 30.0, 30.0]
    assert [e["cluster_loss"] == 0.0 for e in logs if "cluster_loss" in e][:1] == [True]
