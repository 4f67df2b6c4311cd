"""`hf-clusterable measure [MODEL]`: clusterability of a model's matrices, with baselines."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..constants import CONFIG_NAME
from .flags import parameter_flags


# Library parameters named differently from this command's options (see `flags.py`); used when the clusters are
# computed from the flags, not read from a saved cluster_config.json.
CLUSTER_FLAGS = {"n_clusters": "-k/--clusters", "coupled=False": "--per-matrix", "seed": "--seed"}
RECLUSTER_HINT = {"a ClusterConfig": "-k/--clusters, --targets or --init (which re-cluster)"}


def register(subparsers) -> None:
    p = subparsers.add_parser("measure", help="clusterability of a model's matrices, with baselines")
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
    p.set_defaults(func=run, flags=parameter_flags(p, RECLUSTER_HINT))


def run(args: argparse.Namespace) -> int:
    from ..config import ClusterConfig
    from ..examples.models import register_auto_classes
    from ..examples.offline import GEMMA3_270M, gemma3_270m_gguf
    from ..modeling.measure import measure
    from ..modeling.plot import panel_names, plot_blocks, render_blocks
    from ..modeling.streaming import DiskWeights, open_model
    from ..utils.io import atomic_write, check_output_file, json_text

    json_path = check_output_file(args.json, "--json")
    plot_path = check_output_file(args.plot, "--plot")
    if json_path is not None and plot_path is not None and json_path.absolute() == plot_path.absolute():
        raise ValueError(f"--json and --plot both name {args.json}; give two files.")
    if plot_path is not None:
        require_matplotlib("--plot")
    if args.targets and args.target_regex:
        raise ValueError("use either --targets or --target-regex, not both.")
    if args.gguf_file is not None and args.model is None:
        raise ValueError("--gguf-file names a file inside MODEL; give MODEL too.")
    overrides = args.clusters is not None or args.targets or args.target_regex or args.per_matrix or args.init
    saved = args.model is not None and Path(args.model, CONFIG_NAME).is_file() and not overrides
    config = None
    if not saved:
        targets_flag = "--target-regex" if args.target_regex else "--targets"
        args.flags = {**args.flags, **CLUSTER_FLAGS, "targets": targets_flag}  # errors below name these flags
        config = ClusterConfig(
            n_clusters=args.clusters if args.clusters is not None else 4,
            targets=args.targets or args.target_regex or None,
            coupled=not args.per_matrix,
            init=args.init or "spectral",
            seed=args.seed,
        )
    name = args.model or GEMMA3_270M
    print(f"loading {name} ...", file=sys.stderr)
    register_auto_classes()  # a ClusterNet checkpoint (the paper's example networks) loads like any other model
    folder, gguf_file = gemma3_270m_gguf() if args.model is None else (args.model, args.gguf_file)
    model = open_model(folder, gguf_file)  # a folder of safetensors is read one matrix at a time, never loaded
    report = measure(model, args.model if saved else config, progress=not args.quiet)
    print(report.to_markdown())
    print(
        f"\nmean clusterability {report.mean:.4f} vs baseline {report.baseline:.4f} "
        f"(normalised {report.normalised:.4f}; 0 = unstructured, 1 = block-diagonal)"
    )
    if json_path is not None:
        atomic_write(json_path, json_text({"model": name, **report.to_dict()}))
        print(f"wrote {json_path}", file=sys.stderr)
    if plot_path is not None:
        if isinstance(model, DiskWeights):  # read the few panels' matrices only
            atomic_write(plot_path, render_blocks(model.select(panel_names(report.partitions)), report.partitions))
        else:
            plot_blocks(model, report.partitions, plot_path)
        print(f"wrote {plot_path}", file=sys.stderr)
    return 0


def require_matplotlib(flag: str) -> None:
    """Fail before any work when a plot is asked for but matplotlib (an optional dependency) is missing."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise ImportError(f"{flag} needs matplotlib: pip install 'hf-clusterable[plots]'.")
