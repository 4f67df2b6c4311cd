"""`hf-clusterable extract CHECKPOINT --cluster C --output-dir DIR`: one cluster of a clustered checkpoint (or each,
with `--all`) saved as a standalone, smaller model that `from_pretrained` loads, with its tokenizer and a model card.

Every check runs before anything is written, and everything is written into a hidden folder next to DIR first and
moved into place at the end, so bad input or a failure half-way leaves nothing behind.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..utils.io import check_output_dir
from .analyze import TASKS, add_data_arguments, check_clustered_checkpoint, check_data_args, load_task


def register(subparsers) -> None:
    """Register `hf-clusterable extract` on the CLI's subparsers."""
    p = subparsers.add_parser(
        "extract",
        help="save one cluster of a clustered checkpoint (or each) as a standalone, smaller model",
        description="Every MLP keeps only the cluster's hidden neurons; the result loads with from_pretrained and "
        "computes what the full model computes with every other cluster silenced.",
    )
    p.add_argument("checkpoint", help="folder written by ClusterableTrainer.save_model (or a Hub repo)")
    p.add_argument("--cluster", type=int, default=None, help="the cluster to extract, 0 to k - 1")
    p.add_argument("--all", action="store_true", help="extract every cluster, one folder each: DIR/cluster-C")
    p.add_argument("--output-dir", required=True, help="where the model, tokenizer and model card go")
    p.add_argument("--overwrite", action="store_true", help="replace the files of a non-empty --output-dir")
    p.add_argument(
        "--push-to-hub",
        default=None,
        metavar="REPO",
        help="also push the folder to this Hub repo (with --all: one repo per cluster, REPO-cluster-C)",
    )
    p.add_argument("--private", action="store_true", help="create new Hub repos private")
    p.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or the saved login)")
    p.add_argument(
        "--task",
        default=None,
        help=f"held-out data for the card's losses: one of {', '.join(TASKS)} (default with --dataset: causal-lm)",
    )
    add_data_arguments(p)
    p.set_defaults(func=run)


def _check_args(args: argparse.Namespace) -> None:
    """Check the flags before any work."""
    if args.all == (args.cluster is not None):
        raise ValueError("give either --cluster C or --all.")
    if args.cluster is not None and args.cluster < 0:
        raise ValueError(f"--cluster must be >= 0, got {args.cluster}.")
    if args.task is None and args.dataset is not None:
        args.task = "causal-lm"
    if args.task is not None:
        check_data_args(args)
    if args.push_to_hub is not None:
        from ..hub.push import check_repo_id

        check_repo_id(args.push_to_hub)


def _model_class(checkpoint: str) -> Any:
    """The Auto class for a checkpoint without a task: image classifiers by their architecture, else `load_model`'s
    default (the causal LM class when there is one)."""
    from transformers import AutoConfig, AutoModelForImageClassification

    architectures = getattr(AutoConfig.from_pretrained(checkpoint), "architectures", None) or [""]
    return AutoModelForImageClassification if architectures[0].endswith("ForImageClassification") else None


def _processor(checkpoint: str, tokenizer: Any) -> Any:
    """The checkpoint's processor or tokenizer, to save next to the extracted model; None when it has neither."""
    if tokenizer is not None:
        return tokenizer
    from transformers import AutoProcessor, AutoTokenizer

    for auto in (AutoProcessor, AutoTokenizer):
        try:
            return auto.from_pretrained(checkpoint)
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            continue
    return None


def _copy_task_record(checkpoint: str, folder: Path) -> None:
    """Copy the modular-addition split record, so `analyze` rebuilds the same held-out pairs for the extract."""
    from ..examples.modular_addition import TASK_NAME
    from ..utils.hub import resolve_file
    from ..utils.io import atomic_write

    try:
        atomic_write(folder / TASK_NAME, Path(resolve_file(checkpoint, TASK_NAME)).read_bytes())
    except FileNotFoundError:
        pass


def _move_into(staging: Path, out: Path) -> None:
    """Move everything staged into `out` (same file system: renames), replacing entries of the same name."""
    out.mkdir(parents=True, exist_ok=True)
    for entry in sorted(staging.iterdir()):
        target = out / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        entry.replace(target)


def _staging_folder(out: Path) -> Path:
    """A hidden folder beside `out` (same file system, so moving out of it is a rename), made before any work so an
    unwritable place fails first."""
    parent = next(p for p in out.absolute().parents if p.exists())
    try:
        return Path(tempfile.mkdtemp(dir=parent, prefix=".hf-clusterable-extract-"))
    except OSError as err:
        raise ValueError(f"--output-dir {out}: cannot write in {parent} ({err.strerror or err}).") from err


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    out = check_output_dir(args.output_dir, "--output-dir", overwrite=args.overwrite)
    check_clustered_checkpoint(args.checkpoint, "extract")
    staging = _staging_folder(out)
    try:
        written = _extract(args, out, staging)
        _move_into(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for _, _, line in written:
        print(line)
    if args.push_to_hub is not None:
        _push(written, args)
    return 0


def _repo(args: argparse.Namespace, cluster: int) -> str | None:
    """The Hub repo cluster `cluster` goes to: --push-to-hub itself, or REPO-cluster-C with --all."""
    if args.push_to_hub is None:
        return None
    return f"{args.push_to_hub}-cluster-{cluster}" if args.all else args.push_to_hub


def _extract(args: argparse.Namespace, out: Path, staging: Path) -> list[tuple[Path, str | None, str]]:
    """Load, check, extract and write every chosen cluster into `staging`; returns the folder each gets in `out`, the
    Hub repo it goes to, and a line saying what it is."""
    from ..analysis.ablation import evaluate_task
    from ..analysis.clusters import evaluate_cluster
    from ..examples.models import register_auto_classes
    from ..hub.extract_card import write_extract_card
    from ..modeling.extract import (
        cluster_size,
        extract_cluster,
        extractable_layers,
        intermediate_size_field,
        resolve_partitions,
    )
    from ..modeling.loading import load_model

    register_auto_classes()  # ClusterNet checkpoints load through the Auto classes (and are refused as per-matrix)
    task, auto, tokenizer = load_task(args) if args.task is not None else (None, None, None)
    print(f"loading {args.checkpoint} ...", file=sys.stderr)
    model = load_model(args.checkpoint, auto_class=auto or _model_class(args.checkpoint)).eval()
    targets, partitions, k = resolve_partitions(model, args.checkpoint)
    layers = extractable_layers(model, targets, partitions)
    chosen = list(range(k)) if args.all else [args.cluster]
    sizes = {c: cluster_size(layers, c, k) for c in chosen}  # out of range or empty: fails here, before any write
    width_field = intermediate_size_field(model.config, layers[0].width)[1]
    name = out.absolute().name
    processor = _processor(args.checkpoint, tokenizer)
    full = evaluate_task(model, task) if task is not None else None
    source_parameters = sum(p.numel() for p in model.parameters())
    written = []
    for c in chosen:
        folder, repo = (staging / f"cluster-{c}" if args.all else staging), _repo(args, c)
        sub = extract_cluster(model, partitions, c)
        evaluation = None
        if task is not None:
            evaluation = asdict(evaluate_cluster(model, task, targets, partitions, c, extracted=sub, full=full))
        sub.save_pretrained(folder)
        if processor is not None:
            processor.save_pretrained(folder)
        _copy_task_record(args.checkpoint, folder)
        write_extract_card(
            folder,
            sub,
            sizes[c],
            source=args.checkpoint,
            source_parameters=source_parameters,
            width_field=width_field,
            model_name=repo.split("/")[-1] if repo else (f"{name}-cluster-{c}" if args.all else name),
            repo_id=repo,
            evaluation=evaluation,
        )
        final = out / f"cluster-{c}" if args.all else out
        written.append((final, repo, _line(sizes[c], evaluation, final)))
    return written


def _line(size, evaluation: dict[str, Any] | None, folder: Path) -> str:
    """One line per extracted cluster: its size and, with data, its held-out loss against the full model's."""
    text = (
        f"cluster {size.cluster}: {sum(size.neurons)} hidden neurons ({size.share:.1%} of the MLP weights), "
        f"MLP width {size.intermediate_size}"
    )
    if evaluation is not None:
        text += (
            f"; loss alone {evaluation['alone_loss']:.4f} (full model {evaluation['full_loss']:.4f}, "
            f"without the cluster {evaluation['without_loss']:.4f})"
        )
    return f"{text} -> {folder}"


def _push(written: list[tuple[Path, str | None, str]], args: argparse.Namespace) -> None:
    from ..hub.push import upload_folder

    for folder, repo, _ in written:
        info = upload_folder(
            folder,
            repo,
            f"Upload {folder.name} of {args.checkpoint}, extracted with hf-clusterable",
            private=True if args.private else None,
            token=args.token,
        )
        print(info.pr_url or info.repo_url)
