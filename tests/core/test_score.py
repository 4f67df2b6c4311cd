import pytest
import torch

from hf_clusterable import Partition, baseline, clusterability, normalised
from hf_clusterable.core import kernels, score


def _random_partition(n, m, k, seed):
    g = torch.Generator().manual_seed(seed)
    return Partition(torch.randint(0, k, (n,), generator=g), torch.randint(0, k, (m,), generator=g), k)


def _direct(weight, p):
    mask = p.row_labels[:, None] == p.col_labels[None, :]
    sq = weight.double() ** 2
    return float(sq[mask].sum() / sq.sum())


@pytest.mark.parametrize("seed", range(5))
def test_matches_direct_mask_computation(seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(37, 53, generator=g)
    p = _random_partition(37, 53, 1 + seed % 4 + 1, seed)
    assert float(clusterability(w, p)) == pytest.approx(_direct(w, p), rel=1e-6)


def test_block_diagonal_scores_one_and_unstructured_scores_baseline():
    p = Partition.blocks(40, 60, 4)
    w = torch.randn(40, 60) * (p.row_labels[:, None] == p.col_labels[None, :])
    assert float(clusterability(w, p)) == pytest.approx(1.0)
    # an unstructured (constant-magnitude) matrix scores exactly the baseline, whatever the block sizes
    q = _random_partition(40, 60, 3, 7)
    assert float(clusterability(torch.ones(40, 60), q)) == pytest.approx(baseline(q))
    assert baseline(p) == pytest.approx(0.25)
    assert normalised(baseline(q), baseline(q)) == pytest.approx(0.0)
    assert normalised(1.0, 0.25) == pytest.approx(1.0)


def test_random_matrices_average_to_baseline():
    p = _random_partition(200, 300, 4, 3)
    scores = [
        float(clusterability(torch.randn(200, 300, generator=torch.Generator().manual_seed(s)), p)) for s in range(20)
    ]
    assert sum(scores) / len(scores) == pytest.approx(baseline(p), abs=5e-3)


def test_gradient_matches_analytic():
    w = torch.randn(8, 12, dtype=torch.float32, requires_grad=True)
    p = _random_partition(8, 12, 3, 1)
    c = clusterability(w, p)
    c.backward()
    mask = (p.row_labels[:, None] == p.col_labels[None, :]).float()
    wd = w.detach()
    total, inside = (wd**2).sum(), (wd**2 * mask).sum()
    expected = 2 * wd * (mask * total - inside) / total**2
    torch.testing.assert_close(w.grad, expected, rtol=1e-4, atol=1e-6)


def test_bf16_weights_are_scored_in_fp32():
    w = torch.randn(64, 32)
    p = Partition.blocks(64, 32, 4)
    c = clusterability(w.bfloat16(), p)
    assert c.dtype == torch.float32
    assert float(c) == pytest.approx(_direct(w.bfloat16().float(), p), rel=1e-6)


def test_zero_matrix_scores_one_with_zero_gradient_and_shape_mismatch_raises():
    p = Partition.blocks(4, 4, 2)
    w = torch.zeros(4, 4, requires_grad=True)
    c = clusterability(w, p)
    assert float(c) == 1.0  # no mass outside the blocks; see mass_ratio
    (20.0 * (1 - c)).backward()
    assert torch.equal(w.grad, torch.zeros(4, 4))
    with pytest.raises(ValueError, match="does not match partition shape"):
        clusterability(torch.zeros(4, 5), p)
    with pytest.raises(ValueError, match="2-D"):
        clusterability(torch.zeros(4), p)


# ---- the fused kernels, gradient accumulation and numerical edges ---------------------------------------------


def _direct_grad(weight, p, upstream=1.0):
    """dC/dW from a float64 mask computation."""
    w = weight.detach().double().requires_grad_()
    mask = p.row_labels[:, None] == p.col_labels[None, :]
    sq = w.square()
    (upstream * sq[mask].sum() / sq.sum()).backward()
    return w.grad


@pytest.mark.parametrize("shape", [(37, 53), (64, 5)])
def test_fused_kernels_match_direct_computation(shape):
    # The formulation torch.compile turns into one kernel each way, run eagerly: same numbers as the masks.
    g = torch.Generator().manual_seed(0)
    w = torch.randn(*shape, generator=g)
    p = _random_partition(*shape, 3, 1)
    trail_mask = torch.nn.functional.one_hot(p.col_labels, 3).T.float().contiguous()
    inside, total = kernels._masses_fused(w, p.row_labels, trail_mask)
    assert float(inside / total) == pytest.approx(_direct(w, p), rel=1e-6)
    eager_inside, eager_total = kernels._masses_eager(w, p.row_labels, trail_mask)
    assert float(eager_inside) == pytest.approx(float(inside), rel=1e-6)
    assert float(eager_total) == pytest.approx(float(total), rel=1e-6)
    # backward of C = inside / total: scale_in = 2 / total, scale_total = -2 inside / total^2
    scale_in, scale_total = 2 / total, -2 * inside / total**2
    expected = _direct_grad(w, p).float()
    torch.testing.assert_close(kernels._grad_fused(w, p.row_labels, trail_mask, scale_in, scale_total), expected)
    torch.testing.assert_close(kernels._grad_eager(w, p.row_labels, trail_mask, scale_in, scale_total), expected)
    start = torch.randn(*shape, generator=g)
    for into in (kernels._grad_fused_into, lambda out, *a: kernels._grad_eager(*a, out=out)):
        out = start.clone()
        into(out, w, p.row_labels, trail_mask, scale_in, scale_total)
        torch.testing.assert_close(out, start + expected)


def _conv1d_like(n_out, n_in, seed):
    """A leaf stored (in, out) and read through `.T`, like GPT-2's Conv1D weight."""
    stored = torch.randn(n_in, n_out, generator=torch.Generator().manual_seed(seed)).requires_grad_()
    return stored, stored.T


@pytest.mark.parametrize("layout", ["plain", "transposed"])
def test_gradient_accumulates_into_existing_grad(layout, monkeypatch):
    added = []
    original = score._add_after_accumulation
    monkeypatch.setattr(score, "_add_after_accumulation", lambda *a: added.append(1) or original(*a))
    p = _random_partition(24, 40, 4, 2)
    if layout == "plain":
        leaf = torch.randn(24, 40, generator=torch.Generator().manual_seed(1)).requires_grad_()
        view = leaf
    else:
        leaf, view = _conv1d_like(24, 40, 1)
    expected = _direct_grad(view, p).float()
    expected = expected if layout == "plain" else expected.T
    clusterability(view, p).backward()  # a fresh .grad
    torch.testing.assert_close(leaf.grad, expected)
    clusterability(view, p).backward()  # accumulated into the existing .grad
    torch.testing.assert_close(leaf.grad, 2 * expected)
    # with another gradient of the same parameter in the same backward (the trainer: the layer's own gradient)
    leaf.grad = None
    (clusterability(view, p) + (view * 3.0).sum()).backward()
    torch.testing.assert_close(leaf.grad, expected + 3.0)
    (clusterability(view, p) + (view * 3.0).sum()).backward()
    torch.testing.assert_close(leaf.grad, 2 * expected + 6.0)
    assert len(added) == 4  # every backward added into .grad directly, none handed autograd a second tensor


def test_autograd_grad_and_backward_inputs_do_not_touch_grad():
    p = _random_partition(16, 12, 2, 0)
    w = torch.randn(16, 12, requires_grad=True)
    other = torch.randn(3, requires_grad=True)
    w.grad = torch.ones(16, 12)
    (grad,) = torch.autograd.grad(clusterability(w, p), [w])
    torch.testing.assert_close(grad, _direct_grad(w, p).float())
    (clusterability(w, p) + other.sum()).backward(inputs=[other])
    assert torch.equal(w.grad, torch.ones(16, 12))
    assert torch.equal(other.grad, torch.ones(3))


def test_tensor_hooks_see_the_whole_gradient():
    p = _random_partition(16, 12, 2, 0)
    w = torch.randn(16, 12, requires_grad=True)
    seen = []
    w.register_hook(lambda g: seen.append(g.clone()))
    clusterability(w, p).backward()
    torch.testing.assert_close(seen[0], _direct_grad(w, p).float())
    torch.testing.assert_close(w.grad, seen[0])


class _FailingBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.sum()

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("planned failure")


def test_failed_backward_leaves_no_stale_gradient():
    p = _random_partition(16, 12, 2, 0)
    w = torch.randn(16, 12, requires_grad=True)
    # created first, so autograd runs it after the clusterability node; w's gradient waits for both, so the
    # failure comes after the clusterability backward and before w's gradient is accumulated
    failing = _FailingBackward.apply(w * 1.0)
    with pytest.raises(RuntimeError, match="planned failure"):
        (failing + clusterability(w, p)).backward()
    assert w.grad is None
    clusterability(w, p).backward()
    torch.testing.assert_close(w.grad, _direct_grad(w, p).float())
    assert len(w._post_accumulate_grad_hooks) == 0  # the failed pass's hook was dropped, this pass's removed


def test_huge_weights_are_rescaled_and_tiny_ones_stay_finite():
    p = _random_partition(20, 30, 3, 4)
    w = torch.randn(20, 30, generator=torch.Generator().manual_seed(4))
    reference = float(clusterability(w, p))
    for factor in (1e20, 1e30, 1e-15):
        scaled = (w * factor).requires_grad_()
        c = clusterability(scaled, p)
        assert float(c) == pytest.approx(reference, rel=1e-5)
        (20.0 * (1 - c)).backward()
        assert torch.isfinite(scaled.grad).all()
        torch.testing.assert_close(scaled.grad.double() * factor, -20.0 * _direct_grad(w, p), rtol=1e-3, atol=1e-9)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_or_inf_weights_raise(bad):
    w = torch.randn(8, 8)
    w[3, 5] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        clusterability(w, Partition.blocks(8, 8, 2))


def test_compile_setting_is_checked(monkeypatch):
    monkeypatch.setenv("HF_CLUSTERABLE_COMPILE", "sometimes")
    with pytest.raises(ValueError, match="HF_CLUSTERABLE_COMPILE must be"):
        clusterability(torch.randn(8, 8, requires_grad=True), Partition.blocks(8, 8, 2))


@pytest.mark.slow
def test_compiled_kernels_match_direct_computation(monkeypatch):
    # Compiling takes seconds per shape, so the default suite runs the same formulation eagerly (above).
    monkeypatch.setenv("HF_CLUSTERABLE_COMPILE", "1")
    for layout in ("plain", "transposed"):
        p = _random_partition(48, 80, 4, 3)
        if layout == "plain":
            leaf = torch.randn(48, 80, generator=torch.Generator().manual_seed(3)).requires_grad_()
            view = leaf
        else:
            leaf, view = _conv1d_like(48, 80, 3)
        c = clusterability(view, p)
        assert float(c) == pytest.approx(_direct(view, p), rel=1e-6)
        c.backward()
        c = clusterability(view, p)
        c.backward()  # accumulates in place
        expected = _direct_grad(view, p).float()
        torch.testing.assert_close(leaf.grad, 2 * (expected if layout == "plain" else expected.T))
    assert not kernels._compiled.failed and kernels._compiled._fns
