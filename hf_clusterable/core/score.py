"""Clusterability: the share of a matrix's squared weight that lies inside its k diagonal blocks.

Scores are built from two sums (in-block mass, total mass) so a weight split across processes can be scored by
summing per-shard masses before dividing.

The regulariser runs every training step over large matrices, so its cost is counted in reads of the weights. The
floor is one read for the forward (both sums in one pass) and one read plus one write for the backward
(dC/dW = 2 W (mask - C) / total); `kernels.py` holds the arithmetic, fused by a compiler where one is at hand. The
backward does not hand autograd a second weight-sized gradient to add to the layer's own: it adds into `.grad` right
after autograd has accumulated the parameter's other gradients (see `_accumulating_leaf`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .kernels import add_block_grad, block_grad, block_masses, cluster_masks
from .partition import Partition


# A matrix whose total squared mass is at most this (weights of order 1e-18 or below: zero-initialised or pruned)
# scores 1 with zero gradient. Above it, the gradient 2 W (mask - C) / total stays finite in fp32 for any upstream
# gradient up to ~1e8, so the loss can never turn the model's parameters into inf or NaN.
ZERO_MASS = 1e-30


def _check_shape(weight: torch.Tensor, partition: Partition) -> None:
    if weight.ndim != 2:
        raise ValueError(f"clusterability needs a 2-D weight, got shape {tuple(weight.shape)}.")
    if tuple(weight.shape) != partition.shape:
        raise ValueError(
            f"weight shape {tuple(weight.shape)} does not match partition shape {partition.shape}; "
            "weights are read as (out_features, in_features)."
        )


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
        return cls(rows, cols, cluster_masks(rows, k), cluster_masks(cols, k))

    def slice_rows(self, start: int, stop: int) -> BlockCodes:
        return self._replace(
            row_labels=self.row_labels[start:stop], row_mask=self.row_mask[:, start:stop].contiguous()
        )

    def slice_cols(self, start: int, stop: int) -> BlockCodes:
        return self._replace(
            col_labels=self.col_labels[start:stop], col_mask=self.col_mask[:, start:stop].contiguous()
        )


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
            param.grad = block_grad(*args)
        elif type(grad) is torch.Tensor and grad.dtype == param.dtype and grad.is_contiguous():
            add_block_grad(grad, *args)
        else:
            grad.add_(block_grad(*args))


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
        inside, total = block_masses(stored, lead, trail_mask, training=ctx.needs_input_grad[0])
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
        grad = block_grad(*args)
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
