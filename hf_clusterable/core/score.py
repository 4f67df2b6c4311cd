"""Clusterability: the share of a matrix's squared weight that lies inside its k diagonal blocks.

Scores are built from two sums (in-block mass, total mass) so a weight split across processes can be scored by
summing per-shard masses before dividing.

The regulariser runs every training step over large matrices, so its cost is counted in reads of the weights. The
floor is one read for the forward (both sums in one pass) and one read plus one write for the backward
(dC/dW = 2 W (mask - C) / total). On CPU and CUDA, large matrices that require grad go through fused kernels
compiled by TorchInductor (C++ on CPU, Triton on CUDA): the block mask is never stored, each element's cluster test
is a lookup in a k x m table of column masks by its row's label. The backward does not hand autograd a second
weight-sized gradient to add to the layer's own: it adds into `.grad` right after autograd has accumulated the
parameter's other gradients (see `_accumulating_leaf`). Without a compiler, for small matrices (compiling does not
pay) and for one-off scoring without grad, the same arithmetic runs eagerly in row chunks sized to stay in cache.
`HF_CLUSTERABLE_COMPILE=0` turns compiling off, `=1` forces it for every size.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from typing import NamedTuple

import torch

from .partition import Partition


logger = logging.getLogger(__name__)

# A matrix whose total squared mass is at most this (weights of order 1e-18 or below: zero-initialised or pruned)
# scores 1 with zero gradient. Above it, the gradient 2 W (mask - C) / total stays finite in fp32 for any upstream
# gradient up to ~1e8, so the loss can never turn the model's parameters into inf or NaN.
ZERO_MASS = 1e-30

# Compiling pays for itself on matrices of about a million entries (GPT-2's MLP matrices have 2.4 million); below
# that the eager kernels are fast enough and tests and small models skip the compile time (seconds per shape).
_COMPILE_MIN_NUMEL = 1 << 20
# Eager CPU kernels work in row chunks of about this many elements, so temporaries stay in the L2 cache.
_CHUNK_NUMEL = 1 << 16


def _check_shape(weight: torch.Tensor, partition: Partition) -> None:
    if weight.ndim != 2:
        raise ValueError(f"clusterability needs a 2-D weight, got shape {tuple(weight.shape)}.")
    if tuple(weight.shape) != partition.shape:
        raise ValueError(
            f"weight shape {tuple(weight.shape)} does not match partition shape {partition.shape}; "
            "weights are read as (out_features, in_features)."
        )


def _cluster_masks(labels: torch.Tensor, k: int) -> torch.Tensor:
    """(k, n) float 0/1 table, row c marking the indices labelled c (no one_hot: it syncs a GPU to check labels)."""
    return (labels[None, :] == torch.arange(k, device=labels.device)[:, None]).float()


class BlockCodes(NamedTuple):
    """A partition's labels and cluster masks on one device, built once and reused every step.

    `row_mask` is (k, n_rows) and `col_mask` (k, n_cols): row c of a mask marks the rows (columns) of cluster c.
    """

    row_labels: torch.Tensor
    col_labels: torch.Tensor
    row_mask: torch.Tensor
    col_mask: torch.Tensor

    @classmethod
    def of(cls, partition: Partition, device: torch.device | str | None = None) -> BlockCodes:
        rows, cols = partition.row_labels.to(device), partition.col_labels.to(device)
        k = partition.n_clusters
        return cls(rows, cols, _cluster_masks(rows, k), _cluster_masks(cols, k))

    def slice_rows(self, start: int, stop: int) -> BlockCodes:
        return self._replace(
            row_labels=self.row_labels[start:stop], row_mask=self.row_mask[:, start:stop].contiguous()
        )

    def slice_cols(self, start: int, stop: int) -> BlockCodes:
        return self._replace(
            col_labels=self.col_labels[start:stop], col_mask=self.col_mask[:, start:stop].contiguous()
        )


# ---- kernels ----------------------------------------------------------------------------------------------------
# Every kernel sees the weight in its stored (contiguous) layout as `w` (a x b), the labels of its a rows as `lead`
# and, as `trail_mask` (k x b), one 0/1 row per cluster marking the columns of that cluster. Element (i, j) is in a
# block iff trail_mask[lead[i], j] == 1. The gradient is w * (trail_mask[lead] * scale_in + scale_total), where the
# two scalars are twice the upstream gradients of the in-block and total sums.


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
    lead_mask = _cluster_masks(lead, trail_mask.shape[0])
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


def _masses(
    w: torch.Tensor, lead: torch.Tensor, trail_mask: torch.Tensor, training: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    if torch.compiler.is_compiling():  # inside a compiled model: the outer compiler fuses the plain formulation
        return _masses_fused(w, lead, trail_mask)
    # Only the regulariser, which runs every step, repays compiling; one-off scoring (measure, reports) stays eager.
    if training and _compiled.wanted(w):
        inside, total = _compiled.run(_masses_fused, _masses_eager, w, lead, trail_mask)
        return inside, total
    return _masses_eager(w, lead, trail_mask)


def _grad(
    w: torch.Tensor, lead: torch.Tensor, trail_mask: torch.Tensor, scale_in: torch.Tensor, scale_total: torch.Tensor
) -> torch.Tensor:
    if torch.compiler.is_compiling():
        return _grad_fused(w, lead, trail_mask, scale_in, scale_total)
    if _compiled.wanted(w):
        return _compiled.run(_grad_fused, _grad_eager, w, lead, trail_mask, scale_in, scale_total)
    return _grad_eager(w, lead, trail_mask, scale_in, scale_total)


def _grad_into(
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


# ---- autograd ---------------------------------------------------------------------------------------------------


def _stored_leaf(weight: torch.Tensor, stored: torch.Tensor) -> torch.Tensor | None:
    """The parameter whose `.grad` holds this weight's gradient in the stored layout, or None if there is none.

    That is the weight itself when it is a leaf, or the leaf it is a plain transpose of (GPT-2's Conv1D).
    """
    if weight.is_leaf:
        return weight if stored is weight else None
    base = weight._base
    if (
        base is not None
        and base.is_leaf
        and base.shape == stored.shape
        and base.stride() == stored.stride()
        and base.storage_offset() == stored.storage_offset()
        and base.data_ptr() == stored.data_ptr()
    ):
        return base
    return None


def _accumulating_leaf(ctx, grad_inside: torch.Tensor, grad_total: torch.Tensor) -> torch.Tensor | None:
    """The parameter to add this gradient into directly, when that is exactly what autograd would do, else None.

    Autograd sums every gradient of a parameter, then adds the sum into `.grad` in place (or makes it `.grad`).
    Adding ours into `.grad` after that, in the parameter's post-accumulate-grad hook, gives the same result
    without writing a second weight-sized tensor and reading it back for the sum. Anything else autograd might do
    falls back to returning the gradient: `torch.autograd.grad` (gradients returned, not accumulated),
    `create_graph`, tensor hooks that must see the gradient, other post-accumulate hooks (their order would change),
    tensor subclasses (DTensor) and DeepSpeed parameters.
    """
    leaf, view = ctx.leaf, ctx.view
    if leaf is None or not leaf.requires_grad or grad_inside.requires_grad or grad_total.requires_grad:
        return None
    if (
        type(leaf) not in (torch.Tensor, torch.nn.Parameter)
        or hasattr(leaf, "ds_id")
        or leaf._backward_hooks
        or (view is not None and view._backward_hooks)
        or any(not isinstance(h, _AddAfterAccumulation) for h in (leaf._post_accumulate_grad_hooks or {}).values())
    ):
        return None
    # The leaf's AccumulateGrad node: this node's next function, behind the view's node for a transposed weight.
    node = ctx.next_functions[0][0]
    for _ in range(4):
        if node is None or hasattr(node, "variable"):
            break
        node = node.next_functions[0][0] if len(node.next_functions) == 1 else None
    if node is None or getattr(node, "variable", None) is not leaf:
        return None
    try:  # raises inside torch.autograd.grad, where leaves are not accumulated into
        if not torch._C._will_engine_execute_node(node):
            return None
    except (RuntimeError, AttributeError):
        return None
    return leaf


class _AddAfterAccumulation:
    """A post-accumulate-grad hook adding one gradient into `.grad` once, during one backward pass only."""

    def __init__(self, kernel_args: tuple[torch.Tensor, ...]) -> None:
        self.task = torch._C._current_graph_task_id()
        self.kernel_args: tuple[torch.Tensor, ...] | None = kernel_args

    def __call__(self, param: torch.Tensor) -> None:
        if self.kernel_args is None or torch._C._current_graph_task_id() != self.task:
            return
        args, self.kernel_args = self.kernel_args, None
        grad = param.grad
        if grad is None:
            param.grad = _grad(*args)
        elif type(grad) is torch.Tensor and grad.dtype == param.dtype and grad.is_contiguous():
            _grad_into(grad, *args)
        else:
            grad.add_(_grad(*args))


def _add_after_accumulation(leaf: torch.Tensor, *kernel_args: torch.Tensor) -> None:
    """Add the gradient into `leaf.grad` right after autograd has accumulated the parameter's other gradients.

    The hook runs inside AccumulateGrad, before any node post-hook (DDP's bucket reduction) sees `.grad`. It is
    removed when the backward pass ends and does nothing in any other pass, so a backward that fails halfway
    cannot leave a gradient behind for the next one; hooks left by such a failure are dropped here.
    """
    hooks = leaf._post_accumulate_grad_hooks or {}
    task = torch._C._current_graph_task_id()
    for key in [k for k, h in hooks.items() if isinstance(h, _AddAfterAccumulation) and h.task != task]:
        del hooks[key]
    handle = leaf.register_post_accumulate_grad_hook(_AddAfterAccumulation(kernel_args))
    torch.autograd.Variable._execution_engine.queue_callback(handle.remove)


class _BlockMass(torch.autograd.Function):
    """(in-block, total) squared mass: one read of W forward; backward one read plus one write, into `.grad`."""

    @staticmethod
    def forward(ctx, weight, row_labels, col_labels, row_mask, col_mask):
        # A transposed view (GPT-2's Conv1D) is read through its contiguous storage with the labels' roles swapped.
        transposed = not weight.is_contiguous() and weight.T.is_contiguous()
        stored = weight.T if transposed else weight.contiguous()
        lead, trail_mask = (col_labels, row_mask) if transposed else (row_labels, col_mask)
        inside, total = _masses(stored, lead, trail_mask, training=ctx.needs_input_grad[0])
        ctx.transposed = transposed
        leaf = _stored_leaf(weight, stored) if weight.requires_grad and not torch.compiler.is_compiling() else None
        ctx.leaf, ctx.view = leaf, (weight if leaf is not None and leaf is not weight else None)
        ctx.save_for_backward(stored, lead, trail_mask)
        return inside, total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_inside, grad_total):
        stored, lead, trail_mask = ctx.saved_tensors
        args = (stored, lead, trail_mask, (2 * grad_inside).float(), (2 * grad_total).float())
        leaf = None if torch.compiler.is_compiling() else _accumulating_leaf(ctx, grad_inside, grad_total)
        if leaf is not None:
            _add_after_accumulation(leaf, *args)
            return None, None, None, None, None
        grad = _grad(*args)
        return (grad.T if ctx.transposed else grad), None, None, None, None


def block_mass(weight: torch.Tensor, codes: BlockCodes) -> tuple[torch.Tensor, torch.Tensor]:
    """(in-block squared mass, total squared mass) in fp32, differentiable in `weight`.

    Both are sums, so shards of one matrix can be scored separately and added up. They overflow to inf once the
    total passes fp32's range (weights near 1e19 / sqrt(numel)); `clusterability` rescales when that happens.
    """
    return _BlockMass.apply(weight, *codes)


def mass_ratio(inside: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """inside / total, with C = 1 and a zero gradient for an all-zero matrix.

    An all-zero (zero-initialised or pruned) matrix has no mass outside its blocks, so it scores 1, and the
    regulariser leaves it alone: the gradient is exactly zero, never 0 * inf. See `ZERO_MASS` for the cut-off.
    """
    empty = total <= ZERO_MASS
    return torch.where(empty, 1.0, inside / torch.where(empty, 1.0, total))


def clusterability(weight: torch.Tensor, partition: Partition) -> torch.Tensor:
    """C = (sum of W^2 inside the k blocks) / (sum of all W^2), a 0-dim fp32 tensor differentiable in `weight`.

    Weights whose squares overflow fp32 (above ~1e19) are rescaled by a power of two first, which changes no ratio.
    NaN or Inf weights raise a ValueError. Both checks look at the two sums, so they cost no extra read of a
    healthy weight (on a GPU they wait for the result once).
    """
    weight = torch.as_tensor(weight)
    _check_shape(weight, partition)
    codes = BlockCodes.of(partition, weight.device)
    inside, total = block_mass(weight, codes)
    if not bool(torch.isfinite(total)):
        biggest = weight.detach().abs().amax()
        if not bool(torch.isfinite(biggest)):
            raise ValueError(
                "weight contains NaN or Inf values, so its clusterability is undefined; "
                "the run has diverged or the checkpoint is damaged: lower the learning rate or reload the weights."
            )
        scale = 2.0 ** -math.ceil(math.log2(float(biggest)))  # exact: a power of two only moves exponents
        inside, total = block_mass(weight * scale, codes)
    return mass_ratio(inside, total)


def baseline(partition: Partition) -> float:
    """The clusterability an unstructured matrix gets with these block sizes: sum_c n_c m_c / (n m).

    Equals 1/k for equal blocks and grows when one cluster is large, which is why it is reported next to every score.
    """
    rows = partition.row_sizes().double()
    cols = partition.col_sizes().double()
    n, m = partition.shape
    return float((rows * cols).sum() / (n * m))


def normalised(score: float, base: float) -> float:
    """(C - B) / (1 - B): 0 for an unstructured matrix, 1 for a perfectly block-diagonal one."""
    return (score - base) / (1.0 - base) if base < 1.0 else 0.0
