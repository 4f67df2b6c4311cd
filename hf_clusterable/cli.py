"""`hf-clusterable` command line: demo, train, measure, push, analyze.

Each command checks its arguments and output paths before doing work, and a user error ends as one line on stderr
with exit status 2 instead of a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .analysis import add_analyze_parser
from .config import ClusterConfig, atomic_write
from .constants import CONFIG_NAME
from .demo import add_demo_parser
from .models import load_model
from .offline import GEMMA3_270M
from .train import add_train_parser


def _output_path(value: str | None, flag: str) -> Path | None:
    """Fail before any work if an output path cannot be written."""
    if value is None:
        return None
    path = Path(value)
    if path.is_dir():
        raise ValueError(f"{flag} {value} is a folder; give a file path.")
    if not path.parent.exists():
        raise ValueError(f"{flag} {value}: folder {path.parent} does not exist; create it first.")
    if not os.access(path.parent, os.W_OK):
        raise ValueError(f"{flag} {value}: folder {path.parent} is not writable.")
    return path


def _measure(args: argparse.Namespace) -> int:
    from .measure import measure
    from .plot import plot_blocks

    json_path = _output_path(args.json, "--json")
    plot_path = _output_path(args.plot, "--plot")
    overrides = args.clusters is not None or args.targets or args.target_regex or args.per_matrix or args.init
    if args.targets and args.target_regex:
        raise ValueError("use either --targets or --target-regex, not both.")
    saved = args.model is not None and Path(args.model, CONFIG_NAME).is_file() and not overrides
    config = None
    if not saved:
        config = ClusterConfig(
            n_clusters=args.clusters if args.clusters is not None else 4,
            targets=args.targets or args.target_regex or None,
            coupled=not args.per_matrix,
            init=args.init or "spectral",
            seed=args.seed,
        )
    print(f"loading {args.model or GEMMA3_270M} ...", file=sys.stderr)
    model = load_model(args.model, args.gguf_file)
    report = measure(model, args.model if saved else config, progress=not args.quiet)
    print(report.to_markdown())
    print(
        f"\nmean clusterability {report.mean:.4f} vs baseline {report.baseline:.4f} "
        f"(normalised {report.normalised:.4f}; 0 = unstructured, 1 = block-diagonal)"
    )
    if json_path is not None:
        atomic_write(json_path, json.dumps({"model": args.model or GEMMA3_270M, **report.to_dict()}, indent=2) + "\n")
        print(f"wrote {json_path}", file=sys.stderr)
    if plot_path is not None:
        plot_blocks(model, report.partitions, plot_path)
        print(f"wrote {plot_path}", file=sys.stderr)
    return 0


def _push(args: argparse.Namespace) -> int:
    from .hub import push_command

    return push_command(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-clusterable", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    add_demo_parser(sub)
    add_train_parser(sub)

    p = sub.add_parser("measure", help="clusterability of a model's matrices, with baselines")
    p.add_argument(
        "model", nargs="?", default=None, help="local folder or Hub id (default: the embedded Gemma 3 270M GGUF)"
    )
    p.add_argument("--gguf-file", default=None, help="GGUF file name inside MODEL")
    p.add_argument("--clusters", "-k", type=int, default=None, help="number of clusters k (default 4)")
    p.add_argument("--targets", nargs="+", default=None, help="module names or suffixes (default: MLP matrices)")
    p.add_argument("--target-regex", default=None, help="regex matched against full module names")
    p.add_argument("--per-matrix", action="store_true", help="cluster every matrix on its own (the paper's mode)")
    p.add_argument("--init", choices=["spectral", "blocks"], default=None, help="spectral co-clustering or blocks")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the report as JSON here")
    p.add_argument("--plot", default=None, help="write block-reordered |W| heatmaps (PNG) here")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_measure)

    p = sub.add_parser("push", help="push a clustered model folder with its clusters, metrics and model card")
    p.add_argument("folder", help="output_dir of a ClusterableTrainer run (must hold cluster_config.json)")
    p.add_argument("repo_id", help="Hub repo, 'name' or 'namespace/name' (created if missing)")
    p.add_argument("--private", action="store_true", help="create the repo private (no effect if it exists)")
    p.add_argument("--revision", default=None, help="branch to push to (created if missing)")
    p.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    p.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or the saved login)")
    p.set_defaults(func=_push)

    add_analyze_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError, ImportError) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"hf-clusterable: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
