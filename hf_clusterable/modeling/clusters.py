"""Partitions for a whole model: computed once per group, saved as `clusters.safetensors`, checked on load.

The file holds one label vector per row and per column of every target matrix (`<module>.row_labels`,
`<module>.col_labels`), so a saved model can be studied without re-running the co-clustering, and a checkpoint
whose clusters no longer fit the model is caught before anything trains on it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
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


def group_affinity(
    weights: Mapping[str, torch.Tensor], members: list[Target], block_elements: int = 2**22
) -> torch.Tensor:
    """|W| of an MLP's matrices laid out as hidden x residual and summed, each scaled to mean 1 so none dominates.

    `weights` maps each member's name to its `(out, in)` weight and is read one member at a time. Each matrix is
    worked through in blocks of about `block_elements`, so besides the fp32 sum only one block of |W| exists at a
    time: a 70B MLP matrix (28672 x 8192) is 0.9 GiB in fp32, and a reader from disk then holds just one of them.
    """
    total = None
    for t in members:
        weight = weights[t.name]
        # Blocks are cut along the weight's outer dimension in memory, so each is a dense slice that converts to
        # fp32 in the same layout from any dtype: the sums then add up in the same order for bf16 and fp32 weights.
        dim = 0 if weight.stride(0) >= weight.stride(1) else 1
        step = max(1, block_elements // weight.shape[1 - dim])
        spans = [(i, min(step, weight.shape[dim] - i)) for i in range(0, weight.shape[dim], step)]
        mass = sum(float(weight.narrow(dim, i, n).float().abs().sum(dtype=torch.float64)) for i, n in spans)
        if not math.isfinite(mass):  # a float64 sum of fp32 magnitudes overflows only through Inf or NaN
            raise ValueError(f"{t.name} has NaN or Inf weights; fix or reload the weights before clustering them.")
        scale = max(mass / weight.numel(), torch.finfo(torch.float32).tiny)
        if total is None:
            total = torch.zeros(t.group_shape, dtype=torch.float32, device=weight.device)
        side = 1 - dim if t.transposed else dim  # the same span of the hidden x residual sum
        for i, n in spans:
            block = weight.narrow(dim, i, n).float().abs().div_(scale)
            total.narrow(side, i, n).add_(block.T if t.transposed else block)
        del weight  # a weight read from disk is released before the next one is read
    return total


def cluster_model(
    model: nn.Module,
    config: ClusterConfig,
    targets: list[Target],
    *,
    progress: bool = False,
    weights: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, Partition]:
    """One partition per target matrix: spectral co-clustering (or contiguous blocks) per group.

    `weights` (name -> `(out, in)` weight, e.g. `DiskWeights` reading a checkpoint) stands in for the model's own
    weights; `model` then only has to know the module names, as a skeleton on the meta device does.
    """
    modules = modules_by_name(model)
    partitions: dict[str, Partition] = {}
    grouped = groups(targets)
    for members in tqdm(grouped.values(), desc="co-clustering", disable=not progress, unit="group"):
        if config.init == "blocks":
            shared = Partition.blocks(*members[0].group_shape, config.n_clusters)
        else:
            with torch.no_grad():
                source = weights if weights is not None else {t.name: full_weight(modules[t.name]) for t in members}
                affinity = group_affinity(source, members)
                shared = spectral_cocluster(affinity, config.n_clusters, seed=config.seed, tolerance=config.balance)
                del affinity, source  # freed before the next group's matrices are read
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


# Label tensors as the safetensors header names their dtypes: integers only (a float label would be truncated).
INTEGER_DTYPES = frozenset({"I8", "I16", "I32", "I64", "U8", "U16", "U32", "U64"})
# More labels than any matrix side of any model has: a longer vector is refused from the header, before it is read.
MAX_LABELS = 2**24
SIDES = ("row_labels", "col_labels")


def load_clusters(
    path_or_repo: str | os.PathLike,
    subfolder: str | None = None,
    *,
    n_clusters: int | None = None,
    targets: list[Target] | None = None,
    **hub_kwargs,
) -> dict[str, Partition]:
    """Read `clusters.safetensors` from a folder, a file path, or a Hub repo.

    The tensors are the format: `<module>.row_labels` and `<module>.col_labels`, 1-D and of an integer dtype, as
    `save_clusters` or any tool's `safetensors.torch.save_file` writes them. k is the file's `n_clusters` metadata
    when it has one, else `n_clusters`, else that of the `cluster_config.json` beside it, else the largest label + 1.
    With `targets` (the model's target matrices) the names and shapes are checked against them from the file's
    header, before any tensor is read.
    """
    if os.path.isfile(path_or_repo):
        path = str(path_or_repo)
    else:
        path = resolve_file(path_or_repo, CLUSTERS_NAME, subfolder, **hub_kwargs)
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            shapes = label_shapes(path, {key: f.get_slice(key) for key in f.keys()})
            if targets is not None:
                check_clusters(shapes, targets, None)  # names and shapes, before any tensor is read
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (OSError, SafetensorError) as err:
        raise ValueError(
            f"could not read {path}: {err}; re-save it with save_clusters or re-cluster the model."
        ) from err
    if "n_clusters" in metadata:
        try:
            n_clusters = int(metadata["n_clusters"])
        except ValueError:
            raise ValueError(f"{path}: metadata n_clusters {metadata['n_clusters']!r} is not an integer.") from None
    elif n_clusters is None:
        n_clusters = saved_n_clusters(path_or_repo, subfolder, hub_kwargs)
    if n_clusters is None:
        n_clusters = max(int(t.max()) for t in tensors.values()) + 1
    partitions = {}
    for name in shapes:
        try:
            partitions[name] = Partition(tensors[f"{name}.row_labels"], tensors[f"{name}.col_labels"], n_clusters)
        except ValueError as err:
            raise ValueError(f"{path}: {name}: {err}") from err
    return partitions


def label_shapes(path: str, slices: Mapping) -> dict[str, tuple[int, int]]:
    """(rows, columns) of every module in a clusters file, from the header (`slices`: key -> safetensors slice);
    refuses foreign keys, unpaired sides, non-integer dtypes and label vectors that are not 1-D or too long."""
    if not slices:
        raise ValueError(f"{path} holds no clusters; re-cluster the model.")
    lengths: dict[str, dict[str, int]] = {}
    for key, tensor in slices.items():
        name, _, side = key.rpartition(".")
        if side not in SIDES or not name:
            raise ValueError(f"{path} holds {key!r}; a clusters file holds only <module>.row_labels and .col_labels.")
        dtype, shape = tensor.get_dtype(), tuple(tensor.get_shape())
        if dtype not in INTEGER_DTYPES:
            raise ValueError(f"{path}: {key} has dtype {dtype}; cluster labels must be integers.")
        if len(shape) != 1 or shape[0] == 0:
            raise ValueError(f"{path}: {key} has shape {list(shape)}; labels must be a non-empty 1-D vector.")
        if shape[0] > MAX_LABELS:
            raise ValueError(f"{path}: {key} has {shape[0]} entries, more labels than any matrix side ({MAX_LABELS}).")
        lengths.setdefault(name, {})[side] = shape[0]
    for name, sides in lengths.items():
        for side in SIDES:
            if side not in sides:
                raise ValueError(f"{path} lacks {name}.{side}; the file is incomplete, re-cluster the model.")
    return {name: (sides["row_labels"], sides["col_labels"]) for name, sides in sorted(lengths.items())}


def saved_n_clusters(path_or_repo: str | os.PathLike, subfolder: str | None, hub_kwargs: dict) -> int | None:
    """k of the `cluster_config.json` saved beside a clusters file (or in its folder or repo), None without one."""
    source, sub = (Path(path_or_repo).parent, None) if os.path.isfile(path_or_repo) else (path_or_repo, subfolder)
    try:
        return ClusterConfig.from_pretrained(source, subfolder=sub, **hub_kwargs).n_clusters
    except FileNotFoundError:
        return None


def check_clusters(
    partitions: Mapping[str, Partition | tuple[int, int]], targets: list[Target], n_clusters: int | None
) -> None:
    """Raise one clear error if saved partitions (or their shapes) do not fit the model's target matrices, or their k
    is not `n_clusters` (None: not checked)."""
    shapes = {n: p if isinstance(p, tuple) else p.shape for n, p in partitions.items()}
    wanted = {t.name: t.shape for t in targets}
    missing = sorted(set(wanted) - set(shapes))
    extra = sorted(set(shapes) - set(wanted))
    wrong = [f"{n} saved {shapes[n]} vs model {wanted[n]}" for n in wanted if n in shapes and shapes[n] != wanted[n]]
    ks = {p.n_clusters for p in partitions.values() if isinstance(p, Partition)}
    k_wrong = sorted(ks - {n_clusters}) if n_clusters is not None else []
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
