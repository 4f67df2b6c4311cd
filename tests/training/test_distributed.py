"""Multi-process correctness on CPU (gloo): DDP through accelerate, FSDP2 through torchrun + fully_shard.

Each launch runs in a subprocess with a timeout; the launched scripts call destroy_process_group before exiting.
"""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainingArguments

from hf_clusterable import ClusterConfig, load_clusters
from hf_clusterable.training.trainer import ClusterableTrainer
from tests.testing_utils import NO_DROPOUT, free_port, pattern_data, run_launch, tiny_model


SCRIPTS = Path(__file__).parent / "distributed"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> ClusterableTrainer:
    """The single-process run the launched scripts reproduce: 2 SGD steps, batch 4, spectral clusters, lambda 30."""
    trainer = ClusterableTrainer(
        model=tiny_model("gpt2", **NO_DROPOUT),
        args=TrainingArguments(
            output_dir=str(tmp_path_factory.mktemp("single")), report_to="none", save_strategy="no",
            per_device_train_batch_size=4, max_steps=2, logging_steps=1, disable_tqdm=True, use_cpu=True, seed=0,
        ),
        train_dataset=pattern_data(4),
        cluster_config=ClusterConfig(loss_weight=30.0),
        optimizer_cls_and_kwargs=(torch.optim.SGD, {"lr": 0.5}),
    )  # fmt: skip
    trainer.train()
    return trainer


def check_against(reference: ClusterableTrainer, out: Path, ranks: tuple[int, ...]) -> None:
    info = json.loads((out / "logs.json").read_text())
    assert info["world"] == 2
    expected = {n: p.detach() for n, p in reference.model.named_parameters()}
    for rank in ranks:
        weights = load_file(out / f"weights_rank{rank}.safetensors")
        for name, value in expected.items():
            torch.testing.assert_close(weights[name], value, rtol=1e-5, atol=1e-5, msg=f"rank {rank} {name}")
        partitions = load_clusters(out / f"clusters_rank{rank}")
        assert all(partitions[n] == reference.partitions[n] for n in reference.partitions)
    logged = [e["clusterability"] for e in info["logs"] if "clusterability" in e]
    expected_logged = [e["clusterability"] for e in reference.state.log_history if "clusterability" in e]
    assert logged == pytest.approx(expected_logged, abs=1e-5)


def test_ddp_two_processes_match_a_single_process(tmp_path, reference):
    run_launch(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
         "--main_process_port", str(free_port()), str(SCRIPTS / "ddp_check.py"), str(tmp_path)]
    )  # fmt: skip
    check_against(reference, tmp_path, ranks=(0, 1))


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="needs deepspeed (CPU build)")
def test_zero3_two_processes_match_a_single_process(tmp_path, reference):
    run_launch(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
         str(SCRIPTS / "zero3_check.py"), str(tmp_path)],
        timeout=600,
        env={"DS_ACCELERATOR": "cpu"},
    )  # fmt: skip
    check_against(reference, tmp_path, ranks=(0,))


def test_fsdp2_sharded_weights_match_a_single_process(tmp_path):
    out = tmp_path / "fsdp2.json"
    run_launch(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
         str(SCRIPTS / "fsdp2_check.py"), str(out)]
    )  # fmt: skip
    results = json.loads(out.read_text())
    for model_type, r in results.items():
        assert r["partitions_equal"], model_type
        assert r["value_diff"] < 1e-5, model_type
        assert r["reg_grad_diff"] < 1e-5, model_type
        assert r["full_grad_diff"] < 1e-5, model_type
        assert r["captured_grad_diff"] < 1e-5, model_type
