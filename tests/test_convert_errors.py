"""Bad input to convert-hf-to-gguf: one `error:` line, non-zero exit, no traceback, nothing left behind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import assert_clean_error, run_cli
from test_convert_support import build_qwen


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return build_qwen(tmp_path_factory.mktemp("good") / "qwen2", 2)


@pytest.fixture
def model(good, tmp_path) -> Path:
    """A fresh copy of a valid checkpoint to break."""
    return Path(shutil.copytree(good, tmp_path / "model"))


def convert_fails(model: Path, tmp_path: Path, fragment: str, cli: bool = False) -> None:
    """The conversion fails with `fragment` in its one-line error and leaves no file behind.

    `cli` runs the command in a subprocess (the user's view: exit code, stderr, no traceback);
    otherwise the pipeline runs in-process, which is much faster, and must raise LlamatorchError."""
    from llamatorch.convert.pipeline import convert
    from llamatorch.core.errors import LlamatorchError

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    if cli:
        proc = run_cli("convert-hf-to-gguf", str(model), "--outtype", "f16", "--outfile", str(out_dir / "x.gguf"))
        assert_clean_error(proc, fragment)
    else:
        with pytest.raises(LlamatorchError) as exc:
            convert(model, out_dir / "x.gguf", "f16", progress=False)
        msg = str(exc.value)
        assert fragment.lower() in msg.lower() and "\n" not in msg, msg
    assert list(out_dir.iterdir()) == [], "a failed conversion left files behind"
    if model.is_dir():
        assert not [p for p in model.iterdir() if ".gguf" in p.name or p.name.endswith(".data")]


def _config(model: Path) -> dict:
    return json.loads((model / "config.json").read_text())


def test_folder_without_config(model, tmp_path):
    (model / "config.json").unlink()
    convert_fails(model, tmp_path, "no config.json", cli=True)


def test_not_a_folder(tmp_path):
    convert_fails(tmp_path / "nowhere", tmp_path, "not found", cli=True)


def test_unknown_architecture_names_supported_ones(model, tmp_path):
    cfg = _config(model)
    cfg["architectures"] = ["FrobnicatorForCausalLM"]
    (model / "config.json").write_text(json.dumps(cfg))
    from llamatorch.convert.archs import REGISTRY

    assert {"LlamaForCausalLM", "Phi3ForCausalLM", "GraniteForCausalLM", "BertModel"} <= set(REGISTRY)
    convert_fails(model, tmp_path, "unsupported architecture 'FrobnicatorForCausalLM'; supported: "
                                   + ", ".join(sorted(REGISTRY)), cli=True)


def test_corrupt_safetensors_header(model, tmp_path):
    st = model / "model.safetensors"
    data = bytearray(st.read_bytes())
    data[8:40] = b"\x00garbage, not a JSON header....."
    st.write_bytes(bytes(data))
    convert_fails(model, tmp_path, "corrupt safetensors header", cli=True)


def test_truncated_safetensors(model, tmp_path):
    st = model / "model.safetensors"
    size = st.stat().st_size
    with open(st, "r+b") as f:
        f.truncate(size - 1000)
    convert_fails(model, tmp_path, "truncated safetensors")


def test_missing_tensor(model, tmp_path):
    from safetensors.torch import load_file, save_file

    st = model / "model.safetensors"
    tensors = load_file(st)
    del tensors["model.layers.1.mlp.down_proj.weight"]
    save_file(tensors, st, metadata={"format": "pt"})
    convert_fails(model, tmp_path, "missing tensors: blk.1.ffn_down.weight")


def test_missing_shard(model, tmp_path):
    index = {"metadata": {}, "weight_map": {"model.embed_tokens.weight": "model-00002-of-00002.safetensors"}}
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    convert_fails(model, tmp_path, "missing: model-00002-of-00002.safetensors")


def test_shape_contradicts_config(model, tmp_path):
    cfg = _config(model)
    cfg["intermediate_size"] = 128  # the checkpoint's MLP is 96 wide
    (model / "config.json").write_text(json.dumps(cfg))
    convert_fails(model, tmp_path, "has shape [64, 96], but the config implies [64, 128]")


def test_too_many_layers_for_config(model, tmp_path):
    cfg = _config(model)
    cfg["num_hidden_layers"] = 1  # the checkpoint has two
    (model / "config.json").write_text(json.dumps(cfg))
    convert_fails(model, tmp_path, "has no GGUF name")


def test_bad_outtype(model, tmp_path):
    proc = run_cli("convert-hf-to-gguf", str(model), "--outtype", "q4_0")
    assert_clean_error(proc, "--outtype must be one of")


def test_broken_tokenizer_after_tensor_data_started(model, tmp_path):
    """The vocabulary fails while tensor data is being spooled: both temporary files are removed."""
    (model / "tokenizer.model").write_bytes(b"this is not a sentencepiece model")
    convert_fails(model, tmp_path, "tokenizer.model")


def test_config_missing_a_needed_field(model, tmp_path):
    cfg = _config(model)
    del cfg["num_hidden_layers"]
    cfg["model_type"] = "not-a-transformers-type"  # keep AutoConfig from filling the default back in
    (model / "config.json").write_text(json.dumps(cfg))
    convert_fails(model, tmp_path, "num_hidden_layers", cli=True)
