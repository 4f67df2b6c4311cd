"""Speed and memory of the clusterability loss, on GPT-2-small shapes (12 layers, 768x3072 MLP, k = 4).

(a) regulariser forward+backward over the 24 MLP matrices, in "reads of the weights": its time divided by the time
    of one read of all 24 matrices (a sum over each), measured in the same run. The floor is about 3: one read
    forward, one read and one write backward. Paths: `clusterability(weight, partition)` per matrix, and the
    trainer's `ClusterabilityLoss` with `capture()` (its marginal cost over the same MLP forward+backward without
    it), each with a fresh `.grad` and accumulating into an existing one. Baselines, timed in the same rounds:
    the paper's per-step boolean mask built from index lists, and an efficient `torch.where` block mask, eager and
    `torch.compile`d. Every case runs once per round, interleaved; the table holds medians over the rounds.
    Target: <= 3.5 reads on every path at one thread.
(b) a full `ClusterableTrainer` step against a plain `Trainer` step on a GPT-2-small-shaped model, each in a fresh
    process at `--threads` threads, rounds interleaved; on CPU the clock is the process's CPU time. Target <= 1.05x.
(c) peak memory (max RSS on CPU, max allocated on CUDA) of the same two runs, each in a fresh process.

    python benchmarks/regulariser_speed.py [--device cuda] [--threads 1] [--rounds 15] [--skip-trainer]

On CPU the clock is the thread's CPU time (the machine may be shared; at one thread all the work runs on the
calling thread), on CUDA wall time after a synchronize.
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


def gpt2_small(n_embd: int = 768, n_layer: int = 12, device: str = "cpu"):
    """GPT-2 small by default; wider or deeper shapes for accelerators, where 24 small matrices are launch-bound."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        n_embd=n_embd, n_layer=n_layer, n_head=n_embd // 64, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0
    )
    with torch.device(device):
        return GPT2LMHeadModel(config)


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


def where_score(w: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """An efficient direct formulation: the block mask as a broadcast comparison of labels, never stored."""
    sq = w.float().square()
    return torch.where(rows[:, None] == cols[None, :], sq, 0.0).sum() / sq.sum()


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def clock(device: str) -> float:
    """Thread CPU time on CPU (robust to other processes on shared cores), wall time on accelerators."""
    if device == "cpu":
        return time.thread_time()
    sync(device)
    return time.perf_counter()


def random_partitions(targets, k: int = 4, seed: int = 0) -> dict:
    """Balanced labels in a random order, as spectral co-clustering produces (blocks are not contiguous)."""
    from hf_clusterable import Partition

    g = torch.Generator().manual_seed(seed)
    out = {}
    for t in targets:
        p = Partition.blocks(*t.shape, k)
        rows = p.row_labels[torch.randperm(t.shape[0], generator=g)]
        cols = p.col_labels[torch.randperm(t.shape[1], generator=g)]
        out[t.name] = Partition(rows, cols, k)
    return out


def copy_bandwidth(device: str) -> float:
    """GB/s of a large same-device copy (bytes read + bytes written), best of 5: 1 GiB on GPUs, 256 MiB on CPU."""
    nbytes = 1 << 28 if device == "cpu" else 1 << 30
    src = torch.empty(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(5):
        sync(device)
        start = time.perf_counter()
        dst.copy_(src)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * nbytes / best / 1e9


def bench_regulariser(device: str, rounds: int, n_embd: int = 768, n_layer: int = 12, warmup: int = 3) -> None:
    from hf_clusterable import clusterability, find_targets
    from hf_clusterable.modeling.targets import get_weight, modules_by_name, stored_weight
    from hf_clusterable.training.loss import ClusterabilityLoss

    model = gpt2_small(n_embd, n_layer, device)
    targets = find_targets(model)
    partitions = random_partitions(targets)
    modules = modules_by_name(model)
    params = [stored_weight(modules[t.name]) for t in targets]
    parts = [partitions[t.name] for t in targets]
    # Baselines get the weights in their stored, contiguous layout (GPT-2's Conv1D stores W^T: the labels swap
    # roles), which is how the paper's code scores GPT-2 and is the fast layout for elementwise kernels.
    labels = []
    for t, p in zip(targets, parts, strict=True):
        swap = not get_weight(modules[t.name]).is_contiguous()
        rows, cols = (p.col_labels, p.row_labels) if swap else (p.row_labels, p.col_labels)
        labels.append((rows.to(device), cols.to(device)))
    index_lists = [
        [(torch.nonzero(r == c).squeeze(1), torch.nonzero(q == c).squeeze(1)) for c in range(p.n_clusters)]
        for p, (r, q) in zip(parts, labels, strict=True)
    ]
    weight_bytes = sum(p.numel() * p.element_size() for p in params)
    loss = ClusterabilityLoss(model, targets, partitions)
    blocks = model.transformer.h
    xs = [torch.randn(1, 1, model.config.n_embd, device=device, generator=None) for _ in blocks]
    where_compiled = torch.compile(where_score, dynamic=False)

    def weights():
        return [get_weight(modules[t.name]) for t in targets]

    def read():
        for p in params:
            p.sum()

    def through_clusterability():
        torch.stack([clusterability(w, p) for w, p in zip(weights(), parts, strict=True)]).mean().backward()

    def mlp_task() -> torch.Tensor:
        return sum(block.mlp(x).sum() for block, x in zip(blocks, xs, strict=True))

    def model_only():
        mlp_task().backward()

    def trainer_path():
        with loss.capture():
            task = mlp_task()
        (task + 20.0 * (1 - loss())).backward()

    spare = [torch.empty_like(p) for p in params]

    def floor_new():  # the floor with a fresh .grad: one read forward, then read + write into new memory
        with torch.no_grad():
            for p in params:
                p.sum()
            for p in params:
                p * 2.0

    def floor_acc():  # the floor when accumulating: one read forward, then read W + read-modify-write .grad
        with torch.no_grad():
            for p in params:
                p.sum()
            for p, g in zip(params, spare, strict=True):
                g.add_(p)

    def paper_mask():
        mask_loss(params, index_lists).backward()

    def where_eager():
        torch.stack([where_score(w, *rc) for w, rc in zip(params, labels, strict=True)]).mean().backward()

    def where_compiled_fn():
        torch.stack([where_compiled(w, *rc) for w, rc in zip(params, labels, strict=True)]).mean().backward()

    # name -> (function, keep the existing .grad)
    cases = {
        "read": (read, True),
        "clusterability": (through_clusterability, False),
        "clusterability_acc": (through_clusterability, True),
        "model": (model_only, False),
        "trainer": (trainer_path, False),
        "model_acc": (model_only, True),
        "trainer_acc": (trainer_path, True),
        "floor_new": (floor_new, True),
        "floor_acc": (floor_acc, True),
        "paper_mask": (paper_mask, False),
        "where_eager": (where_eager, False),
        "where_compiled": (where_compiled_fn, False),
    }
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for r in range(warmup + rounds):  # interleaved: drifts in machine load hit every case alike
        for name, (fn, keep) in cases.items():
            if not keep:
                model.zero_grad(set_to_none=True)
            elif params[0].grad is None:
                fn()  # give the accumulate cases a .grad to accumulate into
            start = clock(device)
            fn()
            samples[name].append(clock(device) - start)
        if r < warmup:
            for name in cases:
                samples[name].clear()
    reads = {
        name: statistics.median(t / unit for t, unit in zip(samples[name], samples["read"], strict=True))
        for name in cases
    }
    reads["trainer"] = statistics.median(
        (t - m) / u for t, m, u in zip(samples["trainer"], samples["model"], samples["read"], strict=True)
    )
    reads["trainer_acc"] = statistics.median(
        (t - m) / u for t, m, u in zip(samples["trainer_acc"], samples["model_acc"], samples["read"], strict=True)
    )
    read_s = statistics.median(samples["read"])

    # exactness against a float64 mask computation, on the path the trainer uses
    model.zero_grad(set_to_none=True)
    through_clusterability()
    ours_grads = [p.grad.clone() for p in params]
    values, grads_ok = [], True
    for w, p, g in zip(weights(), parts, ours_grads, strict=True):
        w64 = w.detach().double().requires_grad_()
        mask = p.row_labels.to(device)[:, None] == p.col_labels.to(device)[None, :]
        sq = w64.square()
        c64 = sq[mask].sum() / sq.sum()
        c64.backward()
        values.append(abs(float(clusterability(w.detach(), p)) - float(c64)) / float(c64))
        expected = w64.grad if w.is_contiguous() else w64.grad.T  # .grad is in the stored layout
        grads_ok &= torch.allclose(g.double() * len(parts), expected, rtol=1e-4, atol=1e-10)

    shapes = sorted({tuple(get_weight(modules[t.name]).shape) for t in targets})
    print(
        f"(a) regulariser fwd+bwd over {len(targets)} MLP matrices {shapes} (k=4), "
        f"median of {rounds} interleaved rounds"
    )
    from hf_clusterable.core.kernels import compiled_kernels_state

    print(f"    fused kernels (hf_clusterable.core.kernels): {compiled_kernels_state()}")
    print(
        f"    one read of the weights ({weight_bytes / 2**20:.0f} MiB): {read_s * 1e3:.1f} ms "
        f"= {weight_bytes / read_s / 1e9:.1f} GB/s; same-device copy bandwidth {copy_bandwidth(device):.1f} GB/s"
    )
    print("    | path | reads of the weights | ms |")
    print("    |---|---|---|")
    rows = [
        ("clusterability(), new .grad", "clusterability"),
        ("clusterability(), accumulate into .grad", "clusterability_acc"),
        ("ClusterabilityLoss + capture(), new .grad (marginal)", "trainer"),
        ("ClusterabilityLoss + capture(), accumulate (marginal)", "trainer_acc"),
        ("floor: read, then read + write into new memory", "floor_new"),
        ("floor: read, then read W + read-modify-write .grad", "floor_acc"),
        ("baseline: per-step boolean mask (paper)", "paper_mask"),
        ("baseline: torch.where mask, eager", "where_eager"),
        ("baseline: torch.where mask, torch.compile", "where_compiled"),
    ]
    for label, name in rows:
        print(f"    | {label} | {reads[name]:.2f} | {reads[name] * read_s * 1e3:.1f} |")
    ours = reads["clusterability"]
    print(
        "    speed-up of clusterability() over: per-step mask "
        f"{reads['paper_mask'] / ours:.1f}x, torch.where eager {reads['where_eager'] / ours:.1f}x, "
        f"torch.where compiled {reads['where_compiled'] / ours:.1f}x"
    )
    print(f"    vs float64 mask: max value rel. diff {max(values):.1e}; gradients equal (rtol 1e-4): {grads_ok}")


def worker(kind: str, device: str, steps: int, batch: int, seq: int, threads: int) -> None:
    """One training run in this process; prints per-step times and peak memory as JSON."""
    torch.set_num_threads(threads)
    # CPU time of the process is robust to other processes on a shared machine; a GPU needs wall time.
    clock = time.perf_counter if device == "cuda" else time.process_time
    from datasets import Dataset
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from hf_clusterable import ClusterConfig
    from hf_clusterable.training.trainer import ClusterableTrainer

    torch.manual_seed(0)
    ids = torch.randint(0, 50257, (batch * (steps + 2), seq)).tolist()
    data = Dataset.from_dict({"input_ids": ids, "labels": ids})

    class Timer(TrainerCallback):
        def __init__(self):
            self.times, self._start = [], 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            sync(device)
            self._start = clock()

        def on_step_end(self, args, state, control, **kwargs):
            sync(device)
            self.times.append(clock() - self._start)

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


def bench_trainer(device: str, steps: int, batch: int, seq: int, rounds: int, threads: int) -> None:
    results: dict[str, list] = {"plain": [], "ours": []}
    peaks: dict[str, list] = {"plain": [], "ours": []}
    for _ in range(rounds):  # interleave, so drifts in machine load hit both alike
        for kind in ("plain", "ours"):
            cmd = [sys.executable, __file__, "--worker", kind, "--device", device, "--steps", str(steps)]
            cmd += ["--batch", str(batch), "--seq", str(seq), "--threads", str(threads)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            data = json.loads(out)
            results[kind].extend(data["times"])
            peaks[kind].append(data["peak_mib"])
    plain, ours = statistics.median(results["plain"]), statistics.median(results["ours"])
    print(
        f"(b) training step, GPT-2 small (124M), batch {batch} x {seq} tokens, {threads} thread(s), "
        f"median of {len(results['ours'])} steps:"
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
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds of (a)")
    parser.add_argument("--trainer-rounds", type=int, default=2, help="fresh-process rounds of (b) and (c)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for (a) and (b); 1 is the most stable")
    parser.add_argument("--n-embd", type=int, default=768, help="model width for (a); the MLP is 4x wider")
    parser.add_argument("--n-layer", type=int, default=12, help="layers for (a): 2 MLP matrices each")
    parser.add_argument("--worker", choices=["plain", "ours"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--skip-trainer", action="store_true")
    parser.add_argument("--skip-regulariser", action="store_true")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.device, args.steps, args.batch, args.seq, args.threads)
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    print(f"device {args.device}, torch threads {torch.get_num_threads()} for (a)")
    if not args.skip_regulariser:
        bench_regulariser(args.device, args.rounds, args.n_embd, args.n_layer)
    torch.set_num_threads(threads)
    if not args.skip_trainer:
        bench_trainer(args.device, args.steps, args.batch, args.seq, args.trainer_rounds, args.threads)


if __name__ == "__main__":
    main()
