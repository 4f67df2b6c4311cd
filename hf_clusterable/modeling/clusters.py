"""Partitions for a whole model: computed once per group, saved as `clusters.safetensors`, checked on load.

The file holds one label vector per row and per column of every target matrix (`<module>.row_labels`,
`<module>.col_labels`), so a saved model can be studied without re-running the co-clustering, and a checkpoint
whose clusters no longer fit the model is caught before anything trains on it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch import nn
from tqdm.auto import tqdm

from ..config import ClusterConfig
from ..constants import CLUSTERS_NAME
from ..core.cocluster import spectral_cocluster
from ..core.partition import Partition
from ..utils.hub import resolve_file
from ..utils.io import atomic_write
from .distributed import full_weight
from .targets import Target, groups, modules_by_name


def group_affinity(model: nn.Module, members: list[Target]) -> torch.Tensor:
    """|W| of an MLP's matrices laid out as hidden x residual and summed, each scaled to mean 1 so none dominates."""
    modules = modules_by_name(model)
    total = None
    for t in members:
        a = full_weight(modules[t.name]).float().abs()
        a = a.T if t.transposed else a
        a = a / a.mean().clamp_min(torch.finfo(torch.float32).tiny)
        total = a if total is None else total + a
    return total


def cluster_model(
    model: nn.Module, config: ClusterConfig, targets: list[Target], *, progress: bool = False
) -> dict[str, Partition]:
    """One partition per target matrix: spectral co-clustering (or contiguous blocks) per group."""
    partitions: dict[str, Partition] = {}
    grouped = groups(targets)
    for members in tqdm(grouped.values(), desc="co-clustering", disable=not progress, unit="group"):
        if config.init == "blocks":
            shared = Partition.blocks(*members[0].group_shape, config.n_clusters)
        else:
            with torch.no_grad():
                affinity = group_affinity(model, members)
            shared = spectral_cocluster(affinity, config.n_clusters, seed=config.seed, tolerance=config.balance)
        for t in members:
            partitions[t.name] = (shared.T if t.transposed else shared).to("cpu")
    return partitions


def save_clusters(save_directory: str | os.PathLike, partitions: dict[str, Partition]) -> None:
    """Write `clusters.safetensors` atomically."""
    if not partitions:
        raise ValueError("no partitions to save.")
    ks = {p.n_clusters for p in partitions.values()}
    if len(ks) != 1:
        raise ValueError(f"all partitions must have the same n_clusters, got {sorted(ks)}.")
    tensors = {}
    for name, p in partitions.items():
        tensors[f"{name}.row_labels"] = p.row_labels.detach().cpu().clone()
        tensors[f"{name}.col_labels"] = p.col_labels.detach().cpu().clone()
    metadata = {"format": "pt", "n_clusters": str(ks.pop()), "library": "hf_clusterable"}
    atomic_write(Path(save_directory, CLUSTERS_NAME), save(tensors, metadata=metadata))


def load_clusters(path_or_repo: str | os.PathLike, subfolder: str | None = None, **hub_kwargs) -> dict[str, Partition]:
    """Read `clusters.safetensors` from a folder, a file path, or a Hub repo."""
    if os.path.isfile(path_or_repo):
        path = str(path_or_repo)
    else:
        path = resolve_file(path_or_repo, CLUSTERS_NAME, subfolder, **hub_kwargs)
    try:
        with safe_open(path, framework="pt") as f:
            n_clusters = int((f.metadata() or {})["n_clusters"])
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (OSError, SafetensorError, KeyError, ValueError) as err:
        raise ValueError(
            f"could not read {path}: {err}; re-save it with save_clusters or re-cluster the model."
        ) from err
    names = sorted({key.rsplit(".", 1)[0] for key in tensors})
    partitions = {}
    for name in names:
        try:
            partitions[name] = Partition(tensors[f"{name}.row_labels"], tensors[f"{name}.col_labels"], n_clusters)
        except KeyError as err:
            raise ValueError(f"{path} lacks {err.args[0]}; the file is incomplete, re-cluster the model.") from err
    return partitions


def check_clusters(partitions: dict[str, Partition], targets: list[Target], n_clusters: int) -> None:
    """Raise one clear error if saved partitions do not fit the model's target matrices."""
    wanted = {t.name: t.shape for t in targets}
    missing = sorted(set(wanted) - set(partitions))
    extra = sorted(set(partitions) - set(wanted))
    wrong = [
        f"{n} saved {partitions[n].shape} vs model {wanted[n]}"
        for n in wanted
        if n in partitions and partitions[n].shape != wanted[n]
    ]
    k_wrong = sorted({p.n_clusters for p in partitions.values()} - {n_clusters})
    problems = []
    if missing:
        problems.append(f"missing {missing[:3]}{' ...' if len(missing) > 3 else ''}")
    if extra:
        problems.append(f"unexpected {extra[:3]}{' ...' if len(extra) > 3 else ''}")
    if wrong:
        problems.append(f"shape mismatch: {'; '.join(wrong[:3])}")
    if k_wrong:
        problems.append(f"n_clusters {k_wrong} in the file vs {n_clusters} in the config")
    if problems:
        raise ValueError(
            f"{CLUSTERS_NAME} does not match this model ({', '.join(problems)}); load the model it was saved with, "
            "or re-cluster by passing a ClusterConfig instead of the checkpoint folder."
        )
