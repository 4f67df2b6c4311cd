"""Measuring a model from disk, one matrix at a time: time and peak memory on a Llama-2-7B shape.

(a) Writes a random-init Llama checkpoint of the given shape in bf16 to local disk, shard by shard (never the whole
    model in memory), drops its pages from the OS cache, then runs `measure(folder)` in a fresh process and prints
    its wall time and peak RSS next to the peak RSS of a process that imports the same modules and does nothing.
    Target: within 2 GiB of that baseline.
(b) At a small shape where both fit, the streamed report against `measure(load_model(folder))`: the same scores and
    partitions, and the ratio of their peak RSS and times (interleaved rounds, median).

Every checkpoint is deleted at the end, also on failure or Ctrl-C. Defaults: Llama-2-7B (hidden 4096, intermediate
11008, 32 layers, 32 heads, vocab 32000; 13.5 GB), k = 4 coupled spectral co-clustering, one thread.

    python benchmarks/measure_from_disk.py [--shape 7b|70b] [--layers N] [--threads 1] [--dir /tmp]
                                           [--skip-small] [--skip-large]

`--shape 70b --layers 2` checks the 70B claim on two of its layers (4.5 GB): the peak is set by one MLP group and
does not grow with the number of layers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


GiB = 2**30
SHAPES = {
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32),
    "70b": dict(
        hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8
    ),
}
SMALL = dict(hidden_size=2048, intermediate_size=5504, num_hidden_layers=4, num_attention_heads=16)


def llama_config(shape: dict):
    from transformers import LlamaConfig

    shape = {"num_key_value_heads": shape["num_attention_heads"], **shape}
    config = LlamaConfig(**shape, vocab_size=32000, tie_word_embeddings=False)
    config.architectures = ["LlamaForCausalLM"]
    config.dtype = "bfloat16"
    return config


def tensor_shapes(config) -> dict[str, tuple[int, ...]]:
    """Every stored tensor of the model, from a skeleton on the meta device (no memory)."""
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def checkpoint_bytes(shapes: dict[str, tuple[int, ...]]) -> int:
    return sum(2 * torch.Size(s).numel() for s in shapes.values())


def drop_from_page_cache(path: Path) -> None:
    """Flush one file and evict its pages from the OS cache (ours only), so the run reads it from disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def write_checkpoint(folder: Path, config, shard_bytes: int = 2 * GiB, seed: int = 0) -> int:
    """Random bf16 weights written one shard at a time, with the shard index; returns the bytes on disk."""
    from safetensors.torch import save_file

    shapes = tensor_shapes(config)
    shards: list[list[str]] = [[]]
    size = 0
    for key, shape in shapes.items():
        if shards[-1] and size + 2 * torch.Size(shape).numel() > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(key)
        size += 2 * torch.Size(shape).numel()
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(folder)
    generator = torch.Generator().manual_seed(seed)
    weight_map = {}
    for i, keys in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {}
        for key in keys:
            if key.endswith("norm.weight"):
                tensors[key] = torch.ones(shapes[key], dtype=torch.bfloat16)
            else:
                tensors[key] = (torch.randn(shapes[key], generator=generator) * 0.02).to(torch.bfloat16)
        save_file(tensors, folder / name, metadata={"format": "pt"})
        del tensors
        drop_from_page_cache(folder / name)
        weight_map.update(dict.fromkeys(keys, name))
        print(f"    wrote {name} ({len(keys)} tensors)", file=sys.stderr)
    index = {"metadata": {"total_size": checkpoint_bytes(shapes)}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def peak_rss() -> int:
    """This process's peak resident set in bytes: VmHWM, which counts from the exec of this program. (getrusage's
    ru_maxrss would also count the parent's memory that the child shared before its exec.)"""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status: this benchmark needs Linux.")


def worker(mode: str, folder: str) -> None:
    """One measurement in this fresh process; prints its time, peak RSS and report as one JSON line."""
    import transformers.models.llama.modeling_llama  # noqa: F401  (the baseline imports what the runs import)

    from hf_clusterable import ClusterConfig
    from hf_clusterable.modeling.loading import load_model
    from hf_clusterable.modeling.measure import measure

    result: dict = {}
    if mode != "baseline":
        start = time.perf_counter()
        report = measure(load_model(folder) if mode == "loaded" else folder, ClusterConfig())
        result["seconds"] = time.perf_counter() - start
        result["report"] = report.to_dict()
        labels = hashlib.sha256()
        for name in sorted(report.partitions):
            labels.update(report.partitions[name].row_labels.numpy().tobytes())
            labels.update(report.partitions[name].col_labels.numpy().tobytes())
        result["partitions"] = labels.hexdigest()
    result["peak_bytes"] = peak_rss()
    print(json.dumps(result))


def run_worker(mode: str, folder: Path, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    cmd = [sys.executable, __file__, "--worker", mode, "--folder", str(folder), "--threads", str(threads)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{mode} worker failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def fitting_layers(shape: dict, layers: int, free: int) -> int:
    """The most layers (up to `layers`) whose checkpoint fits in `free` bytes with 2 GiB to spare."""
    one, two = (checkpoint_bytes(tensor_shapes(llama_config({**shape, "num_hidden_layers": n}))) for n in (1, 2))
    per_layer = two - one
    return max(1, min(layers, (free - 2 * GiB - (one - per_layer)) // per_layer))


def describe(shape: dict) -> str:
    return (
        f"hidden {shape['hidden_size']}, intermediate {shape['intermediate_size']}, "
        f"{shape['num_hidden_layers']} layers, {shape['num_attention_heads']} heads, vocab 32000, bf16"
    )


def bench_large(root: Path, shape: dict, threads: int) -> None:
    free = shutil.disk_usage(root).free
    layers = fitting_layers(shape, shape["num_hidden_layers"], free)
    if layers < shape["num_hidden_layers"]:
        wanted = shape["num_hidden_layers"]
        print(f"    only {free / GiB:.1f} GiB free in {root}: using {layers} layers instead of {wanted}")
        shape = {**shape, "num_hidden_layers": layers}
    folder = Path(tempfile.mkdtemp(prefix="hf_clusterable_large_", dir=root))
    try:
        print(f"(a) streamed measure of a random-init Llama checkpoint ({describe(shape)}), {threads} thread(s)")
        start = time.perf_counter()
        size = write_checkpoint(folder, llama_config(shape))
        print(f"    checkpoint {size / 1e9:.2f} GB in {folder} (written in {time.perf_counter() - start:.0f} s)")
        base = run_worker("baseline", folder, threads)
        run = run_worker("streamed", folder, threads)
        report = run["report"]
        extra = run["peak_bytes"] - base["peak_bytes"]
        print(f"    {len(report['matrices'])} matrices, k = {report['n_clusters']}, mean C {report['mean']:.4f}")
        print(f"    wall time {run['seconds']:.1f} s (co-clustering + scoring, pages read cold from disk)")
        print(
            f"    peak RSS {run['peak_bytes'] / GiB:.2f} GiB | interpreter with the same imports "
            f"{base['peak_bytes'] / GiB:.2f} GiB | difference {extra / GiB:.2f} GiB (target <= 2 GiB: "
            f"{'met' if extra <= 2 * GiB else 'MISSED'}) | checkpoint {size / GiB:.2f} GiB"
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        print(f"    removed {folder}", file=sys.stderr)


def bench_small(root: Path, threads: int, rounds: int) -> None:
    folder = Path(tempfile.mkdtemp(prefix="hf_clusterable_small_", dir=root))
    try:
        print(f"(b) streamed vs loaded model at a small shape ({describe(SMALL)}), {threads} thread(s)")
        size = write_checkpoint(folder, llama_config(SMALL))
        runs: dict[str, list[dict]] = {"loaded": [], "streamed": []}
        for _ in range(rounds):  # interleaved, so drifts in machine load hit both alike
            for mode in runs:
                runs[mode].append(run_worker(mode, folder, threads))
        base = run_worker("baseline", folder, threads)["peak_bytes"]
        loaded, streamed = runs["loaded"][0], runs["streamed"][0]
        same = loaded["report"] == streamed["report"] and loaded["partitions"] == streamed["partitions"]
        t_loaded = statistics.median(r["seconds"] for r in runs["loaded"])
        t_streamed = statistics.median(r["seconds"] for r in runs["streamed"])
        p_loaded = max(r["peak_bytes"] for r in runs["loaded"])
        p_streamed = max(r["peak_bytes"] for r in runs["streamed"])
        print(f"    checkpoint {size / 1e9:.2f} GB; identical scores and partitions: {same}")
        print(
            f"    peak RSS loaded {p_loaded / GiB:.2f} GiB | streamed {p_streamed / GiB:.2f} GiB | "
            f"ratio {p_streamed / p_loaded:.2f}; above the interpreter ({base / GiB:.2f} GiB): loaded "
            f"{(p_loaded - base) / GiB:.2f} GiB | streamed {(p_streamed - base) / GiB:.2f} GiB | "
            f"ratio {(p_streamed - base) / (p_loaded - base):.2f}"
        )
        print("    (the loaded model maps its safetensors: only the pages it touches, the MLP weights here, count)")
        print(
            f"    time (median of {rounds}) loaded {t_loaded:.1f} s (load + measure) | streamed {t_streamed:.1f} s | "
            f"ratio {t_streamed / t_loaded:.2f}"
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="7b", help="Llama-2 shape of the large run")
    parser.add_argument("--layers", type=int, default=None, help="fewer layers than the shape has, for a quick run")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the small comparison")
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where the checkpoints are written")
    parser.add_argument("--skip-small", action="store_true")
    parser.add_argument("--skip-large", action="store_true")
    parser.add_argument("--worker", choices=["baseline", "streamed", "loaded"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        worker(args.worker, args.folder)
        return
    root = Path(args.dir)
    if not args.skip_small:
        bench_small(root, args.threads, args.rounds)
    if not args.skip_large:
        shape = SHAPES[args.shape]
        bench_large(root, {**shape, "num_hidden_layers": args.layers or shape["num_hidden_layers"]}, args.threads)


if __name__ == "__main__":
    main()
