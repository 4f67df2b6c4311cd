import pytest
import transformers

from hf_clusterable.cli.main import main
from hf_clusterable.modeling.loading import gguf_source


def test_the_one_gguf_file_of_a_folder_is_used(tmp_path):
    (tmp_path / "gemma-3-270m-Q4_K_M.gguf").write_bytes(b"GGUF")
    assert gguf_source(str(tmp_path), None) == (str(tmp_path), "gemma-3-270m-Q4_K_M.gguf")


def test_a_gguf_file_path_is_its_folder_and_name(tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    assert gguf_source(str(tmp_path / "m.gguf"), None) == (str(tmp_path), "m.gguf")


def test_a_folder_with_a_config_or_a_hub_id_is_left_alone(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "extra.gguf").write_bytes(b"GGUF")
    assert gguf_source(str(tmp_path), None) == (str(tmp_path), None)
    assert gguf_source("org/model", None) == ("org/model", None)
    assert gguf_source("org/model", "m.gguf") == ("org/model", "m.gguf")


@pytest.mark.parametrize(
    "files,gguf_file,message",
    [
        (["a.gguf", "b.gguf"], None, r"holds 2 GGUF files \(a.gguf, b.gguf\); pick one with gguf_file"),
        (["notes.txt"], None, "not a model folder"),
        (["a.gguf"], "b.gguf", "gguf_file b.gguf: no such file in"),
    ],
)
def test_ambiguous_or_missing_gguf_files_are_named(tmp_path, files, gguf_file, message):
    for name in files:
        (tmp_path / name).write_bytes(b"x")
    with pytest.raises((ValueError, FileNotFoundError), match=message) as err:
        gguf_source(str(tmp_path), gguf_file)
    assert "huggingface.co" not in str(err.value)


def test_measure_cli_loads_the_one_gguf_and_says_flags(tmp_path, monkeypatch, capsys):
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    seen = {}

    def fake_config(name, **kwargs):
        seen.update(kwargs, name=name)
        raise OSError("stop here")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", fake_config)
    assert main(["measure", str(tmp_path), "--quiet"]) == 2
    assert seen == {"name": str(tmp_path), "gguf_file": "model.gguf"}
    (tmp_path / "other.gguf").write_bytes(b"GGUF")
    assert main(["measure", str(tmp_path), "--quiet"]) == 2
    assert "pick one with --gguf-file" in capsys.readouterr().err
