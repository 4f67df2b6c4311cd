import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from PIL import Image

from hf_clusterable import ClusterConfig, measure
from hf_clusterable.constants import HEATMAP_NAME
from hf_clusterable.hub.card import TEMPLATE_NAME, render_card, write_card
from tests.testing_utils import tiny_model


ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "hf_clusterable" / "templates"
TEMPLATE = TEMPLATES / TEMPLATE_NAME
AUTHORS = ("Golechha", "Chaudhary", "Velja", "Abate", "Schoots")


@pytest.fixture(scope="module")
def scored():
    model = tiny_model("gpt2")
    config = ClusterConfig(n_clusters=3, loss_weight=30.0, model_type="gpt2")
    return model, config, measure(model, config)


def test_card_round_trip(scored, tmp_path):
    model, config, report = scored
    write_card(
        tmp_path,
        model,
        report,
        config,
        model_name="tiny-clustered",
        repo_id="tester/tiny-clustered",
        base_model="openai-community/gpt2",
        datasets="tester/pattern",
        metrics={"eval_loss": 1.25, "eval_runtime": 0.3, "eval_clusterability": 0.9, "epoch": 1.0},
        reference_metrics={"eval_loss": 1.125, "eval_accuracy": 0.5},
    )
    card = ModelCard.load(tmp_path / "README.md")
    data, text = card.data, card.text

    results = {r.metric_type: r for r in data.eval_results}
    assert set(results) == {"clusterability", "normalised_clusterability"}
    assert results["clusterability"].metric_value == pytest.approx(report.mean, abs=1e-6)
    assert results["normalised_clusterability"].metric_value == pytest.approx(report.normalised, abs=1e-6)
    assert results["clusterability"].metric_config == "k=3,targets=mlp"
    assert data.model_name == "tiny-clustered" and data.base_model == "openai-community/gpt2"
    assert data.tags[:2] == ["hf_clusterable", "clusterability"] and data.pipeline_tag == "text-generation"

    block = data.clusterability
    assert (block["n_clusters"], block["loss_weight"]) == (3, 30.0)
    assert block["mean"] == pytest.approx(report.mean, abs=1e-6)
    assert list(block["per_matrix"]) == [r.name for r in report.rows]
    for row in report.rows:
        saved = block["per_matrix"][row.name]
        assert saved["score"] == pytest.approx(row.score, abs=1e-6)
        assert saved["normalised"] == pytest.approx(row.normalised, abs=1e-6)
        assert f"| {row.name} | {row.shape[0]}x{row.shape[1]} | {row.score:.4f} | {row.baseline:.4f} |" in text
    assert f"**{report.mean:.4f}**" in text

    assert "| eval_loss | 1.2500 | 1.1250 |" in text and "| eval_accuracy | - | 0.5000 |" in text
    assert "runtime" not in text and "| eval_clusterability" not in text
    assert "![Block-reordered |W| of each target matrix" in text and f"]({HEATMAP_NAME})" in text
    assert Image.open(tmp_path / HEATMAP_NAME).size[0] > 200
    assert 'AutoModelForCausalLM.from_pretrained("tester/tiny-clustered")' in text
    assert 'ClusterConfig.from_pretrained("tester/tiny-clustered")' in text
    assert 'measure(model, "tester/tiny-clustered")' in text
    assert "arXiv:2502.02470" in text and all(name in text for name in AUTHORS)


def test_card_without_matplotlib_has_no_image(scored, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # `from matplotlib.figure import ...` fails
    model, config, report = scored
    write_card(tmp_path, model, report, config, model_name="m")
    text = (tmp_path / "README.md").read_text()
    assert HEATMAP_NAME not in text and not (tmp_path / HEATMAP_NAME).exists()
    assert ModelCard.load(tmp_path / "README.md").data.eval_results[0].metric_value == pytest.approx(report.mean)


def test_card_before_clusters_exist_has_no_scores(tmp_path):
    config = ClusterConfig(cluster_step=50, model_type="llama")
    card = render_card(None, config, model_name="warming-up", pipeline_tag=None)
    assert card.data.eval_results is None and "clusterability" not in card.data.to_dict()
    assert "computed at step 50" in card.text and "AutoModel.from_pretrained" in card.text
    assert "`mlp.gate_proj`, `mlp.up_proj`, `mlp.down_proj`" in card.text


def test_local_paths_never_become_base_model(scored, tmp_path):
    _, config, report = scored
    assert render_card(report, config, model_name="m", base_model=str(tmp_path)).data.base_model is None
    assert render_card(report, config, model_name="m", base_model="gpt2").data.base_model == "gpt2"


def test_bad_card_input_writes_nothing(scored, tmp_path):
    model, config, report = scored
    with pytest.raises(ValueError, match="model_name"):
        write_card(tmp_path, model, report, config, model_name=None)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built offline from a copy of the sources (the checkout itself is left untouched)."""
    tmp = tmp_path_factory.mktemp("wheel")
    shutil.copytree(
        ROOT / "hf_clusterable", tmp / "src" / "hf_clusterable", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tmp / "src" / name)
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp)]
    subprocess.run([*build, str(tmp / "src")], check=True, capture_output=True, cwd=tmp / "src")
    return next(tmp.glob("hf_clusterable-*.whl"))


def test_template_ships_inside_the_wheel(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        for template in TEMPLATES.glob("*.md"):  # the card and the analysis report
            assert zf.read(f"hf_clusterable/templates/{template.name}").decode() == template.read_text()
    assert "hf_clusterable/templates/__init__.py" in names
    assert not any(n.startswith(("tests/", "benchmarks/", "recipes/")) for n in names)


@pytest.mark.slow
def test_installed_wheel_renders_the_template(wheel, tmp_path):
    """A fresh interpreter that sees only the unpacked wheel reads the template through importlib.resources."""
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(tmp_path / "site")
    check = (
        "import hf_clusterable.templates as t; from pathlib import Path; "
        f"assert Path(t.__file__).is_relative_to({str(tmp_path / 'site')!r}), t.__file__; "
        "assert t.template_text('clusterable_model_card.md').startswith('---\\n{{ card_data }}')"
    )
    env = {"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
