import numpy as np
import torch
from PIL import Image

from hf_clusterable import Partition
from hf_clusterable.modeling.plot import plot_blocks, reordered


def test_reordering_makes_planted_blocks_diagonal():
    g = torch.Generator().manual_seed(0)
    truth = Partition(torch.randint(0, 3, (90,), generator=g), torch.randint(0, 3, (60,), generator=g), 3)
    w = torch.randn(90, 60, generator=g) * (truth.row_labels[:, None] == truth.col_labels[None, :])
    image = reordered(w, truth, resolution=30)
    assert image.shape == (30, 30)
    rows = torch.cumsum(truth.row_sizes(), 0) * 30 // 90
    cols = torch.cumsum(truth.col_sizes(), 0) * 30 // 60
    inside = image[: rows[0] - 1, : cols[0] - 1].mean()
    outside = image[: rows[0] - 1, cols[0] + 1 :].mean()
    assert inside > 5 * outside


def test_plot_writes_a_png_with_visible_blocks(tmp_path):
    layer = torch.nn.Linear(64, 128)
    p = Partition.blocks(128, 64, 4)
    with torch.no_grad():
        layer.weight.mul_((p.row_labels[:, None] == p.col_labels[None, :]).float())
    model = torch.nn.Sequential(layer)
    path = plot_blocks(model, {"0": p}, tmp_path / "h.png")
    pixels = np.asarray(Image.open(path).convert("L"), dtype=float)
    assert pixels.shape[0] > 100 and pixels.std() > 10  # not a blank image
