"""`hf-clusterable analyze CHECKPOINT --task ...`: cut test, cluster ablation and circuit sizes of a saved clustered
model, written as a markdown report with PNG plots next to it.

For modular addition the held-out pairs are rebuilt from the split recorded in the checkpoint's `task.json` (written
by `hf-clusterable demo` and `hf-clusterable train`), so they are never pairs the model was trained on.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..analysis.report import ANALYSIS_FOLDER
from ..analysis.tasks import TOKEN_CATEGORIES, Task
from ..constants import ANALYSIS_TASKS, CLUSTERS_NAME, CONFIG_NAME, task_name
from ..utils.hub import looks_local, resolve_file
from ..utils.io import check_writable_folder


TASKS = tuple(t.replace("_", "-") for t in ANALYSIS_TASKS)  # as typed on the command line


def register(subparsers) -> None:
    """Register `hf-clusterable analyze` on the CLI's subparsers."""
    p = subparsers.add_parser(
        "analyze",
        help="cut test, cluster ablation/specialisation and circuit sizes of a clustered checkpoint",
        description="Markdown report with PNG plots: are clusters separate, do they specialise, are circuits small?",
    )
    p.add_argument("checkpoint", help="folder written by ClusterableTrainer.save_model (or a Hub repo)")
    p.add_argument("--task", required=True, help=f"one of {', '.join(TASKS)}")
    p.add_argument("--output-dir", default=None, help="where report.md and the PNGs go (default: CHECKPOINT/analysis)")
    add_data_arguments(p)
    p.add_argument("--share", type=float, default=0.9, help="performance a circuit must keep (default 0.9)")
    p.add_argument("--random-splits", type=int, default=3, help="random neuron splits to compare with (default 3)")
    p.add_argument(
        "--circuit-categories",
        type=int,
        default=20,
        help="categories whose circuits are measured (default 20; 0: none)",
    )
    p.add_argument("--bisection-steps", type=int, default=10, help="circuit-size resolution 2^-N (default 10)")
    p.add_argument(
        "--no-per-cluster",
        dest="per_cluster",
        action="store_false",
        help="skip extracting each cluster on its own (loss alone, loss without it, its tokens, sum of parts)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random splits")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    """The held-out data flags, shared by `analyze` and `extract` (see `load_task`)."""
    p.add_argument(
        "--dataset", default=None, help="held-out data: save_to_disk folder or .json/.jsonl/.csv/.parquet/.txt"
    )
    p.add_argument("--split", default=None, help="split of --dataset, or of the built-in data (default: test)")
    p.add_argument(
        "--data-seed",
        type=int,
        default=None,
        help="seed of the built-in train/test split, as in training (default: the one in CHECKPOINT/task.json, or 0)",
    )
    p.add_argument("--text-column", default="text", help="causal-lm: column with raw text")
    p.add_argument("--max-length", type=int, default=128, help="causal-lm: tokens per sequence")
    p.add_argument("--max-examples", type=int, default=None, help="causal-lm: sequences to use")
    p.add_argument("--token-categories", default="frequency", help="causal-lm: 'frequency' buckets or token 'type'")


def check_data_args(args: argparse.Namespace) -> None:
    """Check `--task` and the data flags of `add_data_arguments` before any work; normalises `args.task`."""
    args.task = task_name(args.task, ANALYSIS_TASKS).replace("_", "-")
    if args.token_categories not in TOKEN_CATEGORIES:
        raise ValueError(
            f"--token-categories must be one of {', '.join(TOKEN_CATEGORIES)}, got {args.token_categories!r}."
        )
    if args.task == "causal-lm" and args.dataset is None:
        raise ValueError(
            "--task causal-lm needs --dataset (held-out text or token ids: a file or a save_to_disk folder)."
        )
    if args.task == "modular-addition" and args.dataset is not None:
        raise ValueError(
            "--task modular-addition builds its own data; use --data-seed and --split instead of --dataset."
        )
    if args.max_length < 2:
        raise ValueError(f"--max-length must be >= 2, got {args.max_length}.")


def _check_args(args: argparse.Namespace) -> None:
    check_data_args(args)
    for flag, value, low in (
        ("--random-splits", args.random_splits, 0),
        ("--bisection-steps", args.bisection_steps, 1),
    ):
        if value < low:
            raise ValueError(f"{flag} must be >= {low}, got {value}.")
    if args.circuit_categories is not None and args.circuit_categories < 0:
        raise ValueError(f"--circuit-categories must be >= 0, got {args.circuit_categories}.")
    if not 0.0 < args.share <= 1.0:
        raise ValueError(f"--share must be in (0, 1], got {args.share}.")


def check_clustered_checkpoint(checkpoint: str, command: str) -> None:
    """Fail in one line unless `checkpoint` is a folder or Hub repo holding the clusters a model was saved with."""
    if not Path(checkpoint).expanduser().is_dir() and looks_local(checkpoint):
        raise ValueError(f"{checkpoint}: no such checkpoint folder.")
    for name in (CONFIG_NAME, CLUSTERS_NAME):
        try:
            resolve_file(checkpoint, name)
        except FileNotFoundError as err:
            raise ValueError(
                f"{checkpoint} has no {name}: {command} needs a model saved with its clusters by ClusterableTrainer "
                "(trainer.save_model)."
            ) from err


def _modular_addition_split(args: argparse.Namespace, vocab_size: int) -> dict[str, Any]:
    """`modular_addition_task`'s p, train_fraction and seed: those of the checkpoint's task.json, else p from the
    model's vocabulary and the defaults. An explicit --data-seed wins over the recorded seed, with a warning."""
    from ..examples.modular_addition import TASK_NAME, load_modular_addition_split

    recorded = load_modular_addition_split(args.checkpoint)
    if recorded is None:
        return {"p": vocab_size - 1, "seed": args.data_seed or 0}
    if vocab_size < recorded["p"] + 1:
        raise ValueError(
            f"{args.checkpoint}: vocab_size {vocab_size} is too small for {TASK_NAME}'s p {recorded['p']}."
        )
    seed = recorded["seed"] if args.data_seed is None else args.data_seed
    if seed != recorded["seed"]:
        print(
            f"hf-clusterable: warning: --data-seed {seed} is not the seed {recorded['seed']} in {TASK_NAME}, the one "
            "the model was trained with; the held-out pairs may include training pairs.",
            file=sys.stderr,
        )
    print(
        f"modular-addition split from {TASK_NAME}: p {recorded['p']}, train fraction {recorded['train_fraction']:g}, "
        f"seed {seed}",
        file=sys.stderr,
    )
    return {**recorded, "seed": seed}


def load_task(args: argparse.Namespace) -> tuple[Task, Any, Any]:
    """The task's data, validated, the loader of the matching model class, and the checkpoint's tokenizer for
    causal-lm (None elsewhere, or when it has none). Call after `check_data_args`."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageClassification

    from ..analysis.tasks import causal_lm_task, classification_task
    from ..examples.models import register_auto_classes
    from ..examples.modular_addition import modular_addition_task
    from ..utils.data_files import load_local_dataset

    register_auto_classes()  # ClusterNet checkpoints (digits) load through the Auto classes

    if args.task == "digits":
        if args.dataset is not None:
            dataset = load_local_dataset(args.dataset, args.split)
        else:
            from ..examples.datasets import digits

            dataset = digits(seed=args.data_seed or 0)[args.split or "test"]
        task = classification_task(dataset, name="digits" if args.dataset is None else "classification")
        return task, AutoModelForImageClassification, None
    if args.task == "modular-addition":
        vocab = getattr(AutoConfig.from_pretrained(args.checkpoint), "vocab_size", None)
        if not isinstance(vocab, int) or vocab < 3:
            raise ValueError(f"{args.checkpoint} is not a modular-addition model (vocab_size {vocab!r}).")
        split = _modular_addition_split(args, vocab)
        return modular_addition_task(split=args.split or "test", **split), AutoModelForCausalLM, None
    tokenizer = None
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.checkpoint)
    except (OSError, ValueError, TypeError, KeyError):
        tokenizer = None  # token ids in the dataset and frequency categories need none
    task = causal_lm_task(
        load_local_dataset(args.dataset, args.split),
        tokenizer=tokenizer,
        categories=args.token_categories,
        text_column=args.text_column,
        max_length=args.max_length,
        max_examples=args.max_examples,
    )
    return task, AutoModelForCausalLM, tokenizer


def run(args: argparse.Namespace) -> int:
    from ..analysis.analyze import analyze

    _check_args(args)
    local = Path(args.checkpoint).expanduser()
    check_clustered_checkpoint(args.checkpoint, "analyze")
    default_out = local / ANALYSIS_FOLDER if local.is_dir() else Path(args.checkpoint.replace("/", "--") + "-analysis")
    out = Path(args.output_dir) if args.output_dir else default_out
    check_writable_folder(out, "--output-dir")
    task, auto, tokenizer = load_task(args)
    print(f"loading {args.checkpoint} ...", file=sys.stderr)
    model = auto.from_pretrained(args.checkpoint)
    report = analyze(
        model,
        task,
        args.checkpoint,
        share=args.share,
        random_splits=args.random_splits,
        max_categories=args.circuit_categories,
        steps=args.bisection_steps,
        seed=args.seed,
        per_cluster=args.per_cluster,
        tokenizer=tokenizer,
        progress=not args.quiet,
    )
    written = report.save(out, model, title=local.name if local.is_dir() else args.checkpoint)
    print(report.summary())
    if report.at_chance:
        print(f"hf-clusterable: warning: {report.chance_warning()}", file=sys.stderr)
    print(f"wrote {written[0]} (+ {len(written) - 1} files)", file=sys.stderr)
    return 0
