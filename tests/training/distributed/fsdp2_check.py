"""Run with torchrun (2 gloo processes): the clusterability loss on FSDP2-sharded weights equals single-process.

Checks, for a Conv1D model (GPT-2: shards become columns once transposed) and a Linear one (Llama: rows):
partitions computed from sharded weights, the loss value, its gradient, and the gradient of task loss + loss after
a full forward/backward with each process on half of the batch, with the masses computed after the forward (on
shards) and inside it (`capture`, on the weights FSDP2 has gathered). Rank 0 writes the largest differences as JSON.
"""

import copy
import json
import sys

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

from hf_clusterable import ClusterConfig, cluster_model, find_targets
from hf_clusterable.training.loss import ClusterabilityLoss
from tests.testing_utils import random_tokens, tiny_model


def grads(model) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in model.named_parameters():
        g = p.grad
        if g is not None:
            out[name] = (g.full_tensor() if hasattr(g, "full_tensor") else g).detach().clone()
    return out


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys(), (sorted(a)[:3], sorted(b)[:3])
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def check(model_type: str, layers_attr: str, rank: int, world: int) -> dict:
    lam = 20.0
    config = ClusterConfig(n_clusters=4, loss_weight=lam)
    reference = tiny_model(model_type, seed=0)
    sharded = copy.deepcopy(reference)
    targets = find_targets(reference)
    ids = random_tokens(4 * world, seed=1)
    # single process: whole batch
    parts_ref = cluster_model(reference, config, targets)
    loss_ref = ClusterabilityLoss(reference, targets, parts_ref)
    c_ref = loss_ref()
    (lam * (1 - c_ref)).backward()
    reg_grads_ref = grads(reference)
    reference.zero_grad()
    out = reference(input_ids=ids, labels=ids)
    (out.loss + lam * (1 - loss_ref())).backward()
    full_grads_ref = grads(reference)
    # FSDP2: each process shards every block, then the root
    for block in layers_attr_get(sharded, layers_attr):
        fully_shard(block)
    fully_shard(sharded)
    parts = cluster_model(sharded, config, targets)
    loss = ClusterabilityLoss(sharded, targets, parts)
    c = loss()
    (lam * (1 - c)).backward()
    reg_grads = grads(sharded)
    sharded.zero_grad()
    local = ids.chunk(world)[rank]
    out = sharded(input_ids=local, labels=local)
    (out.loss + lam * (1 - loss())).backward()
    full_grads = grads(sharded)
    # as the trainer does it: masses captured inside each module's forward, where FSDP2 weights are unsharded
    sharded.zero_grad()
    with loss.capture():
        out = sharded(input_ids=local, labels=local)
    (out.loss + lam * (1 - loss())).backward()
    captured_grads = grads(sharded)
    return {
        "partitions_equal": all(parts[n] == parts_ref[n] for n in parts_ref),
        "value_diff": abs(float(c) - float(c_ref)),
        "reg_grad_diff": max_diff({k: v for k, v in reg_grads.items()}, reg_grads_ref),
        "full_grad_diff": max_diff(full_grads, full_grads_ref),
        "captured_grad_diff": max_diff(captured_grads, full_grads_ref),
        "value": float(c),
    }


def layers_attr_get(model, path: str):
    obj = model
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def main() -> None:
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    rank, world = dist.get_rank(), dist.get_world_size()
    results = {
        "gpt2": check("gpt2", "transformer.h", rank, world),
        "llama": check("llama", "model.layers", rank, world),
    }
    if rank == 0:
        with open(sys.argv[1], "w") as f:
            json.dump(results, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
