"""Speed and memory of the clusterability loss, on GPT-2-small shapes (12 layers, 768x3072 MLP, k = 4).

(a) regulariser forward+backward: `ClusterabilityLoss` against a straightforward implementation that builds a
    boolean block mask from per-cluster index lists every step (the paper's approach). Target >= 10x, same value to
    1e-6 relative.
(b) a full `ClusterableTrainer` step against a plain `Trainer` step on a GPT-2-small-shaped model. Target <= 1.05x.
(c) peak memory (max RSS on CPU, max allocated on CUDA) of the same two runs, each in a fresh process.

    python benchmarks/regulariser_speed.py [--device cuda] [--steps 8] [--batch 4] [--seq 128]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch


def gpt2_small():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))


def mask_loss(weights: list[torch.Tensor], index_lists: list[list[tuple[torch.Tensor, torch.Tensor]]]):
    """The paper's approach: a boolean mask from index lists, built every step, then masked sums."""
    scores = []
    for w, clusters in zip(weights, index_lists, strict=True):
        mask = torch.zeros(w.shape, dtype=torch.bool, device=w.device)
        for rows, cols in clusters:
            mask[rows[:, None], cols[None, :]] = True
        sq = w.float() ** 2
        scores.append(sq[mask].sum() / sq.sum())
    return torch.stack(scores).mean()


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def bench_regulariser(device: str, repeats: int) -> None:
    from hf_clusterable import ClusterConfig, cluster_model, find_targets
    from hf_clusterable.loss import ClusterabilityLoss
    from hf_clusterable.targets import get_weight

    model = gpt2_small().to(device)
    targets = find_targets(model)
    partitions = cluster_model(model, ClusterConfig(init="spectral"), targets)
    ours = ClusterabilityLoss(model, targets, partitions)
    modules = dict(model.named_modules())
    index_lists = [
        [
            (
                torch.nonzero(p.row_labels == c).squeeze(1).to(device),
                torch.nonzero(p.col_labels == c).squeeze(1).to(device),
            )
            for c in range(p.n_clusters)
        ]
        for p in (partitions[t.name] for t in targets)
    ]

    def run_ours():
        model.zero_grad(set_to_none=True)
        value = ours()
        value.backward()
        return value

    def run_mask():
        model.zero_grad(set_to_none=True)
        value = mask_loss([get_weight(modules[t.name]) for t in targets], index_lists)
        value.backward()
        return value

    times = {}
    values = {}
    for name, fn in (("ours", run_ours), ("mask", run_mask)):
        fn()
        sync(device)
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            values[name] = float(fn())
            sync(device)
            samples.append(time.perf_counter() - start)
        times[name] = statistics.median(samples)
    grads_equal = True
    run_ours()
    g_ours = [modules[t.name].weight.grad.clone() for t in targets]
    run_mask()
    for t, g in zip(targets, g_ours, strict=True):
        grads_equal &= torch.allclose(modules[t.name].weight.grad, g, rtol=1e-4, atol=1e-9)
    rel = abs(values["ours"] - values["mask"]) / abs(values["mask"])
    print(f"(a) regulariser fwd+bwd over {len(targets)} matrices (k=4), median of {repeats}:")
    print(f"    boolean-mask baseline {times['mask'] * 1e3:.1f} ms | ours {times['ours'] * 1e3:.1f} ms")
    speedup = times["mask"] / times["ours"]
    print(f"    speed-up {speedup:.1f}x (target >= 10x); value rel. diff {rel:.1e}; grads equal: {grads_equal}")


def worker(kind: str, device: str, steps: int, batch: int, seq: int) -> None:
    """One training run in this process; prints per-step times and peak memory as JSON."""
    from datasets import Dataset
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from hf_clusterable import ClusterConfig
    from hf_clusterable.trainer import ClusterableTrainer

    torch.manual_seed(0)
    ids = torch.randint(0, 50257, (batch * (steps + 2), seq)).tolist()
    data = Dataset.from_dict({"input_ids": ids, "labels": ids})

    class Timer(TrainerCallback):
        def __init__(self):
            self.times, self._start = [], 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            sync(device)
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            sync(device)
            self.times.append(time.perf_counter() - self._start)

    timer = Timer()
    args = TrainingArguments(
        output_dir="/tmp/hf_clusterable_bench",
        report_to="none",
        save_strategy="no",
        per_device_train_batch_size=batch,
        max_steps=steps + 2,
        logging_steps=10_000,
        disable_tqdm=True,
        use_cpu=device == "cpu",
    )
    kwargs = dict(model=gpt2_small(), args=args, train_dataset=data, callbacks=[timer])
    if kind == "ours":
        trainer = ClusterableTrainer(**kwargs, cluster_config=ClusterConfig(loss_weight=20.0))
    else:
        trainer = Trainer(**kwargs)
    trainer.train()
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    print(json.dumps({"times": timer.times[2:], "peak_mib": peak}))


def bench_trainer(device: str, steps: int, batch: int, seq: int, rounds: int) -> None:
    results: dict[str, list] = {"plain": [], "ours": []}
    peaks: dict[str, list] = {"plain": [], "ours": []}
    for _ in range(rounds):  # interleave, so drifts in machine load hit both alike
        for kind in ("plain", "ours"):
            cmd = [sys.executable, __file__, "--worker", kind, "--device", device, "--steps", str(steps)]
            cmd += ["--batch", str(batch), "--seq", str(seq)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            data = json.loads(out)
            results[kind].extend(data["times"])
            peaks[kind].append(data["peak_mib"])
    plain, ours = statistics.median(results["plain"]), statistics.median(results["ours"])
    print(
        f"(b) training step, GPT-2 small (124M), batch {batch} x {seq} tokens, median of {len(results['ours'])} steps:"
    )
    print(f"    plain Trainer {plain:.3f} s | ClusterableTrainer {ours:.3f} s | ratio {ours / plain:.3f} (<= 1.05)")
    p_plain, p_ours = max(peaks["plain"]), max(peaks["ours"])
    label = "max allocated" if device == "cuda" else "max RSS"
    print(
        f"(c) peak memory ({label}): plain {p_plain:.0f} MiB | ours {p_ours:.0f} MiB | ratio {p_ours / p_plain:.3f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--worker", choices=["plain", "ours"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--skip-trainer", action="store_true")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.device, args.steps, args.batch, args.seq)
        return
    print(f"device {args.device}, torch threads {torch.get_num_threads()}")
    bench_regulariser(args.device, args.repeats)
    if not args.skip_trainer:
        bench_trainer(args.device, args.steps, args.batch, args.seq, args.rounds)


if __name__ == "__main__":
    main()
