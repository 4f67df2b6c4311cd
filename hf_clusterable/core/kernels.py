"""The arithmetic behind clusterability's block masses and their gradient, fused when a compiler is at hand.

Every kernel sees the weight in its stored (contiguous) layout as `w` (a x b), the labels of its a rows as `lead`
and, as `trail_mask` (k x b), one 0/1 row per cluster marking the columns of that cluster. Element (i, j) is in a
block iff trail_mask[lead[i], j] == 1. The gradient is w * (trail_mask[lead] * scale_in + scale_total), where the
two scalars are twice the upstream gradients of the in-block and total sums.

On CPU and CUDA, large matrices that require grad go through kernels compiled by TorchInductor (C++ on CPU, Triton
on CUDA): one read of w for both sums, one read and one write for the gradient, the block mask never stored. Small
matrices, one-off scoring and machines without a compiler use eager kernels in cache-sized row chunks.
`HF_CLUSTERABLE_COMPILE=0` turns compiling off, `=1` forces it for every size.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import torch


logger = logging.getLogger(__name__)

# Compiling pays for itself on matrices of about a million entries (GPT-2's MLP matrices have 2.4 million); below
# that the eager kernels are fast enough and tests and small models skip the compile time (seconds per shape).
_COMPILE_MIN_NUMEL = 1 << 20
# Eager CPU kernels work in row chunks of about this many elements, so temporaries stay in the L2 cache.
_CHUNK_NUMEL = 1 << 16


def cluster_masks(labels: torch.Tensor, k: int) -> torch.Tensor:
    """(k, n) float 0/1 table, row c marking the indices labelled c (no one_hot: it syncs a GPU to check labels)."""
    return (labels[None, :] == torch.arange(k, device=labels.device)[:, None]).float()


def _masses_fused(w: torch.Tensor, lead: torch.Tensor, trail_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    sq = w.float().square()
    # Row sums first: the compiled kernel then keeps two vector accumulators per row and reads w exactly once.
    return (sq * trail_mask[lead]).sum(1).sum(), sq.sum(1).sum()


def _grad_fused(
    w: torch.Tensor, lead: torch.Tensor, trail_mask: torch.Tensor, scale_in: torch.Tensor, scale_total: torch.Tensor
) -> torch.Tensor:
    return (w.float() * (trail_mask[lead] * scale_in + scale_total)).to(w.dtype)


def _grad_fused_into(
    grad: torch.Tensor,
    w: torch.Tensor,
    lead: torch.Tensor,
    trail_mask: torch.Tensor,
    scale_in: torch.Tensor,
    scale_total: torch.Tensor,
) -> None:
    grad.copy_(grad.float() + w.float() * (trail_mask[lead] * scale_in + scale_total))


def _chunk_rows(w: torch.Tensor) -> int:
    # On accelerators one kernel over the whole matrix is best; on CPU, chunks keep temporaries in cache.
    return max(1, _CHUNK_NUMEL // max(1, w.shape[1])) if w.device.type == "cpu" else max(1, w.shape[0])


def _masses_eager(w: torch.Tensor, lead: torch.Tensor, trail_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    lead_mask = cluster_masks(lead, trail_mask.shape[0])
    per_cluster = torch.zeros_like(trail_mask)  # (k, b): mass of each column within each row cluster
    step = _chunk_rows(w)
    for start in range(0, w.shape[0], step):
        chunk = w[start : start + step].float()
        per_cluster.addmm_(lead_mask[:, start : start + step], chunk * chunk)
    return (per_cluster * trail_mask).sum(), per_cluster.sum()


def _grad_eager(
    w: torch.Tensor,
    lead: torch.Tensor,
    trail_mask: torch.Tensor,
    scale_in: torch.Tensor,
    scale_total: torch.Tensor,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    table = trail_mask * scale_in + scale_total  # (k, b): the factor of w for a row of each cluster
    grad = torch.empty_like(w) if out is None else out
    step = _chunk_rows(w)
    for start in range(0, w.shape[0], step):
        rows = slice(start, start + step)
        factor = table.index_select(0, lead[rows])  # a gather, not a k-deep matmul (which MKL runs slowly)
        if w.dtype != torch.float32 or grad.dtype != torch.float32:
            base = 0.0 if out is None else grad[rows].float()
            grad[rows].copy_(base + w[rows].float() * factor)
        elif out is None:
            torch.mul(w[rows], factor, out=grad[rows])
        else:
            grad[rows].addcmul_(w[rows], factor)
    return grad


def _compile_mode() -> str:
    mode = os.environ.get("HF_CLUSTERABLE_COMPILE", "auto").strip().lower()
    if mode not in ("auto", "0", "1"):
        raise ValueError(f"HF_CLUSTERABLE_COMPILE must be 0, 1 or auto, got {mode!r}.")
    return mode


def _compile_options(device: torch.device) -> dict:
    # 256-bit vectors ran the fused reduction ~10% faster than inductor's default 512-bit ones on an AVX-512 CPU
    # (fewer cycles per dependent vector add); other CPUs and CUDA keep inductor's defaults.
    if device.type == "cpu" and torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        return {"cpp.simdlen": 256}
    return {}


class _Compiled:
    """Kernels compiled by TorchInductor on first use; any failure to compile switches to eager for good.

    Each (kernel, input shapes, dtypes, device) is traced once with `make_fx` on fake tensors and compiled with
    `torch._inductor.compile`, i.e. `torch.compile` without TorchDynamo: there are no guards to evaluate per call
    (the key is the guard, and the compiled code checks sizes and strides), which cuts the cost of a call from
    ~50 to ~15 microseconds, and there is no recompile limit for models with many matrix shapes.
    """

    def __init__(self) -> None:
        self.failed = False
        self._fns: dict[tuple, Callable] = {}

    @property
    def built(self) -> bool:
        return bool(self._fns)

    def wanted(self, w: torch.Tensor) -> bool:
        if self.failed or w.device.type not in ("cpu", "cuda"):
            return False
        mode = _compile_mode()
        if mode == "0":
            return False
        if w.device.type == "cuda":
            from torch.utils._triton import has_triton

            if not has_triton():
                return False
        return mode == "1" or w.numel() >= _COMPILE_MIN_NUMEL

    def run(self, fn: Callable, eager: Callable, *args: torch.Tensor):
        key = (fn, args[0].device, *((a.shape, a.dtype) for a in args))
        compiled = self._fns.get(key)
        try:
            if compiled is None:
                from torch.fx.experimental.proxy_tensor import make_fx

                graph = make_fx(fn, tracing_mode="fake")(*args)  # fake tensors: tracing mutates nothing
                compiled = torch._inductor.compile(graph, list(args), options=_compile_options(args[0].device))
                self._fns[key] = compiled
            return compiled(*args)
        except Exception as error:  # no C++ compiler, no Triton, an unsupported platform: the eager kernels work
            self.failed = True
            logger.warning(
                "compiling the clusterability kernels failed (%s: %s); using the eager kernels, which read the "
                "weights a few more times. Set HF_CLUSTERABLE_COMPILE=0 to skip the attempt.",
                type(error).__name__,
                str(error).splitlines()[0] if str(error) else "",
            )
            return eager(*args)


_compiled = _Compiled()


def block_masses(
    w: torch.Tensor, lead: torch.Tensor, trail_mask: torch.Tensor, training: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    if torch.compiler.is_compiling():  # inside a compiled model: the outer compiler fuses the plain formulation
        return _masses_fused(w, lead, trail_mask)
    # Only the regulariser, which runs every step, repays compiling; one-off scoring (measure, reports) stays eager.
    if training and _compiled.wanted(w):
        inside, total = _compiled.run(_masses_fused, _masses_eager, w, lead, trail_mask)
        return inside, total
    return _masses_eager(w, lead, trail_mask)


def block_grad(
    w: torch.Tensor, lead: torch.Tensor, trail_mask: torch.Tensor, scale_in: torch.Tensor, scale_total: torch.Tensor
) -> torch.Tensor:
    if torch.compiler.is_compiling():
        return _grad_fused(w, lead, trail_mask, scale_in, scale_total)
    if _compiled.wanted(w):
        return _compiled.run(_grad_fused, _grad_eager, w, lead, trail_mask, scale_in, scale_total)
    return _grad_eager(w, lead, trail_mask, scale_in, scale_total)


def add_block_grad(
    grad: torch.Tensor,
    w: torch.Tensor,
    lead: torch.Tensor,
    trail_mask: torch.Tensor,
    scale_in: torch.Tensor,
    scale_total: torch.Tensor,
) -> None:
    if _compiled.wanted(w):

        def eager(grad, *args):
            _grad_eager(*args, out=grad)

        _compiled.run(_grad_fused_into, eager, grad, w, lead, trail_mask, scale_in, scale_total)
    else:
        _grad_eager(w, lead, trail_mask, scale_in, scale_total, out=grad)


def compiled_kernels_state() -> str:
    """ "compiled", "eager (compiling failed)" or "not tried yet": for benchmarks and bug reports."""
    if _compiled.failed:
        return "eager (compiling failed)"
    return "compiled" if _compiled.built else "not tried yet"
