"""Our co-clustering against scikit-learn's SpectralCoclustering, in one process, on the same matrices.

Prints, per matrix: seconds for each (best of --repeats after a warm-up), the time ratio sklearn / ours, and the
normalised clusterability (C - B) / (1 - B) of each partition, plus cluster-size balance. scikit-learn's clusters
are unconstrained, so the normalised score of ours with `balanced=False` is printed too: it separates what the
balance constraint costs from what the method finds. Then the seconds to
measure every MLP matrix of Gemma 3 270M (model load excluded). Target: ratio >= 5 with normalised clusterability
at least as high as scikit-learn's.

    python benchmarks/cocluster_vs_sklearn.py            # needs the [gguf] extra for the Gemma rows
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.cluster import SpectralCoclustering
from sklearn.datasets import make_biclusters

from hf_clusterable import (
    ClusterConfig,
    Partition,
    baseline,
    clusterability,
    find_targets,
    measure,
    normalised,
    spectral_cocluster,
)


def best_time(fn, repeats: int) -> tuple[float, object]:
    fn()  # warm-up
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def describe(weight: torch.Tensor, p: Partition) -> tuple[float, str]:
    score = float(clusterability(weight, p))
    rows, cols = p.row_sizes(), p.col_sizes()
    fair_r, fair_c = weight.shape[0] / p.n_clusters, weight.shape[1] / p.n_clusters
    spread = (
        f"rows {rows.min() / fair_r:.2f}-{rows.max() / fair_r:.2f}x, "
        f"cols {cols.min() / fair_c:.2f}-{cols.max() / fair_c:.2f}x"
    )
    return normalised(score, baseline(p)), spread


def matrices(shapes, with_gemma: bool):
    g = torch.Generator().manual_seed(0)
    for shape in shapes:
        yield f"random {shape[0]}x{shape[1]}", torch.randn(*shape, generator=g)
        data, _, _ = make_biclusters(shape=shape, n_clusters=4, noise=60, shuffle=True, random_state=0)
        yield f"planted {shape[0]}x{shape[1]}", torch.tensor(data, dtype=torch.float32)
    if with_gemma:
        from hf_clusterable.offline import load_gemma3_270m

        model = load_gemma3_270m()
        for layer in (0, 9, 17):
            mlp = model.model.layers[layer].mlp
            for name in ("up_proj", "down_proj"):
                yield f"gemma3-270m L{layer} {name}", getattr(mlp, name).weight.detach().float().clone()
        yield "model", model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--small", action="store_true", help="quick run on small shapes (smoke test)")
    parser.add_argument("--no-gemma", action="store_true")
    args = parser.parse_args()
    shapes = [(256, 1024)] if args.small else [(768, 3072), (2048, 16384)]
    print(f"torch threads: {torch.get_num_threads()}  k={args.k}")
    print(
        "| matrix | ours s | sklearn s | speed-up | ours norm. C | sklearn norm. C | ours unbalanced norm. C "
        "| ours sizes | sklearn sizes |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    ratios = []
    model = None
    for label, weight in matrices(shapes, with_gemma=not args.no_gemma):
        if label == "model":
            model = weight
            continue
        ours_t, ours = best_time(lambda w=weight: spectral_cocluster(w, args.k), args.repeats)
        abs_np = weight.abs().numpy()
        sk_t, sk = best_time(lambda a=abs_np: SpectralCoclustering(args.k, random_state=0).fit(a), args.repeats)
        sk_p = Partition(torch.as_tensor(sk.row_labels_), torch.as_tensor(sk.column_labels_), args.k)
        (ours_n, ours_s), (sk_n, sk_s) = describe(weight, ours), describe(weight, sk_p)
        free_n, _ = describe(weight, spectral_cocluster(weight, args.k, balanced=False))
        ratios.append(sk_t / ours_t)
        cells = [label, f"{ours_t:.3f}", f"{sk_t:.3f}", f"{sk_t / ours_t:.1f}x", f"{ours_n:.4f}", f"{sk_n:.4f}"]
        cells.append(f"{free_n:.4f}")
        print("| " + " | ".join([*cells, ours_s, sk_s]) + " |")
    print(f"\ngeometric-mean speed-up: {float(np.exp(np.mean(np.log(ratios)))):.1f}x (min {min(ratios):.1f}x)")
    if model is not None:
        for coupled in (True, False):
            start = time.perf_counter()
            report = measure(model, ClusterConfig(n_clusters=args.k, coupled=coupled))
            label = "coupled sub-MLPs" if coupled else "per matrix"
            print(
                f"measure Gemma 3 270M ({len(report.rows)} matrices, {label}): {time.perf_counter() - start:.1f} s, "
                f"mean C {report.mean:.4f} vs baseline {report.baseline:.4f} (normalised {report.normalised:.4f})"
            )
        # Null model: the same weights with each matrix's entries shuffled (structure gone, magnitudes kept),
        # clustered the same way. What the real weights score above this is structure the co-clustering found.
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for t in find_targets(model):
                w = model.get_submodule(t.name).weight
                w.copy_(w.flatten()[torch.randperm(w.numel(), generator=g)].view_as(w))
        report = measure(model, ClusterConfig(n_clusters=args.k))
        print(
            f"shuffled-weights control (coupled): mean C {report.mean:.4f} vs baseline {report.baseline:.4f} "
            f"(normalised {report.normalised:.4f})"
        )


if __name__ == "__main__":
    main()
