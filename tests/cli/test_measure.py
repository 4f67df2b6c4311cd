import json

import pytest
import torch
from PIL import Image

from hf_clusterable.cli.main import main
from tests.testing_utils import tiny_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-gpt2")
    tiny_model("gpt2").save_pretrained(path)
    return path


def test_measure_prints_table_and_writes_json_and_plot(model_dir, tmp_path, capsys):
    json_path, png = tmp_path / "r.json", tmp_path / "h.png"
    assert main(["measure", str(model_dir), "-k", "3", "--json", str(json_path), "--plot", str(png), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "| transformer.h.1.mlp.c_proj | 32x96 |" in out and "baseline" in out
    data = json.loads(json_path.read_text())
    assert data["n_clusters"] == 3 and len(data["matrices"]) == 4
    assert Image.open(png).size[0] > 200


def test_per_matrix_blocks_and_targets(model_dir, capsys):
    assert main(["measure", str(model_dir), "--targets", "attn.c_attn", "--init", "blocks", "--quiet"]) == 0
    assert "transformer.h.0.attn.c_attn | 96x32" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra,message",
    [
        (["-k", "1"], "-k/--clusters must be an integer >= 2, got 1"),
        (["-k", "40"], "-k/--clusters 40 is larger than the smaller side"),
        (["-k", "40"], "use -k/--clusters <= 32"),
        (["--targets", "mlp.up_proj"], "--targets ['mlp.up_proj'] match no module"),
        (["--targets", "mlp.up_proj"], "transformer.h.N.mlp.c_fc"),
        (["--target-regex", "(mlp"], "--target-regex '(mlp' is not a valid regex"),
        (["--seed", "-1"], "--seed must be an integer >= 0"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(model_dir, tmp_path, capsys, extra, message):
    json_path = tmp_path / "r.json"
    assert main(["measure", str(model_dir), "--json", str(json_path), "--quiet", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("hf-clusterable: error:") and message in err[-1]
    assert not json_path.exists()


def test_unwritable_output_fails_before_loading(tmp_path, capsys):
    assert main(["measure", str(tmp_path / "no-model"), "--json", str(tmp_path / "missing" / "r.json")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_missing_model_folder_is_named(tmp_path, capsys):
    assert main(["measure", str(tmp_path / "nowhere"), "--quiet"]) == 2
    assert "no such model folder" in capsys.readouterr().err


def test_nan_weights_are_refused(tmp_path, capsys):
    model = tiny_model("gpt2")
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.weight[0, 0] = float("nan")
    model.save_pretrained(tmp_path / "nan")
    assert main(["measure", str(tmp_path / "nan"), "--quiet"]) == 2
    assert "NaN or Inf" in capsys.readouterr().err


def test_safetensors_folder_is_streamed_with_the_loaded_models_output(model_dir, tmp_path, capsys, monkeypatch):
    from hf_clusterable.modeling import streaming

    def run(tag: str) -> tuple[str, bytes, bytes]:
        json_path, png = tmp_path / f"{tag}.json", tmp_path / f"{tag}.png"
        assert main(["measure", str(model_dir), "--json", str(json_path), "--plot", str(png), "--quiet"]) == 0
        return capsys.readouterr().out, json_path.read_bytes(), png.read_bytes()

    loader = streaming.load_model
    monkeypatch.setattr(streaming, "load_model", lambda *a, **k: pytest.fail("a safetensors folder was loaded"))
    streamed = run("streamed")
    monkeypatch.setattr(streaming, "load_model", loader)
    monkeypatch.setattr(streaming, "streamable", lambda *a, **k: False)
    assert run("loaded") == streamed  # same table, same JSON, same heatmap


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--json", "{file}/r.json"], "--json {file}/r.json: {file} is a file, not a folder"),
        (["--plot", "/dev/null"], "--plot /dev/null is not a regular file"),
        (["--json", "{tmp}/r.out", "--plot", "{tmp}/r.out"], "--json and --plot both name"),
        (["--gguf-file", "x.gguf"], "--gguf-file names a file inside MODEL"),
    ],
)
def test_outputs_and_flags_are_checked_before_the_model_is_touched(tmp_path, capsys, monkeypatch, flags, message):
    (tmp_path / "file").write_text("x")

    def never(*args, **kwargs):
        pytest.fail("the model was loaded before the arguments were checked")

    monkeypatch.setattr("hf_clusterable.modeling.streaming.open_model", never)
    monkeypatch.setattr("hf_clusterable.examples.offline.gemma3_270m_gguf", never)
    fill = {"file": tmp_path / "file", "tmp": tmp_path}
    assert main(["measure", *[f.format(**fill) for f in flags], "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message.format(**fill) in err[0]


def test_missing_matplotlib_is_reported_before_measuring(model_dir, tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    monkeypatch.setattr("hf_clusterable.modeling.streaming.open_model", lambda *a: pytest.fail("model loaded"))
    assert main(["measure", str(model_dir), "--plot", str(tmp_path / "h.png")]) == 2
    assert "--plot needs matplotlib" in capsys.readouterr().err


def test_errors_about_a_saved_config_name_the_file_not_a_flag(tmp_path, capsys):
    tiny_model("gpt2").save_pretrained(tmp_path)
    (tmp_path / "cluster_config.json").write_text(json.dumps({"targets": "(mlp", "n_clusters": 3}))
    assert main(["measure", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "invalid cluster_config.json at" in err and "targets '(mlp' is not a valid regex" in err
    assert "--target" not in err
