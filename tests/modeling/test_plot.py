import numpy as np
import torch
from PIL import Image

from hf_clusterable import Partition
from hf_clusterable.modeling.plot import blocks_figure, plot_blocks, render_blocks, reordered


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


def noise_panels(n: int, side: int = 200):
    g = torch.Generator().manual_seed(0)
    weights = {f"model.layers.{i}.mlp.up_proj": torch.randn(side, side, generator=g) for i in range(n)}
    return weights, {name: Partition.blocks(side, side, 4) for name in weights}


def test_heatmap_names_its_matrices_and_has_one_colour_bar():
    weights, partitions = noise_panels(3)
    shown = dict(list(weights.items())[:2])
    fig = blocks_figure(shown, partitions)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0].startswith("model.layers.0.mlp.up_proj\nC=") and titles[1].startswith(
        "model.layers.1.mlp.up_proj"
    )
    assert len(fig.axes) == 3 and "99th percentile" in fig.axes[2].get_ylabel()  # two panels, one colour bar
    assert "2 of 3 (evenly spaced) target matrices" in fig._suptitle.get_text()


def test_reference_panels_sit_beside_their_matrix():
    weights, partitions = noise_panels(2)
    reference = {name: w * 2 for name, w in weights.items()}
    fig = blocks_figure(weights, partitions, reference=reference, labels=("lambda = 20", "lambda = 0"))
    titles = [ax.get_title().split("\n")[0] for ax in fig.axes[:4]]
    assert titles == [
        "model.layers.0.mlp.up_proj (lambda = 20)",
        "model.layers.0.mlp.up_proj (lambda = 0)",
        "model.layers.1.mlp.up_proj (lambda = 20)",
        "model.layers.1.mlp.up_proj (lambda = 0)",
    ]


def test_a_page_of_noisy_heatmaps_stays_small(tmp_path):
    # Gemma 3 270M's 24 panels were a 5.2 MB RGBA PNG; noise does not compress, so this is the worst case
    weights, partitions = noise_panels(24)
    data = render_blocks(weights, partitions)
    (tmp_path / "h.png").write_bytes(data)
    image = Image.open(tmp_path / "h.png")
    assert image.mode == "P" and len(data) < 1_000_000
