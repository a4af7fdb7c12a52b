"""`llamatorch inspect`: its facts against gguf-py's GGUFReader (an independent reader), its KV figure
against what the Engine allocates and what llama.cpp printed, its text, its errors, its start-up."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_clean_error, ref_path, run_cli
from llamatorch.core.inspect_model import FTYPE_NAMES, inspect

MIB = 1 << 20

# printed by llama.cpp (the build of ../shared/ref, llama-cpp-python 0.3.36's vendor/llama.cpp) for these files:
# print_info's file type, "model params" and BPW, and llama_kv_cache's "size = ... MiB" at -c N
LLAMA_CPP = {
    "smollm2": dict(file_type="Q4_1", params="134.52 M", bpw="5.74", kv={8192: 180.00 * MIB}),
    "gemma3": dict(file_type="Q4_K - Medium", params="268.10 M", bpw="7.36",
                   kv={32768: (96.00 + 15.00) * MIB, 4000: (12.00 + 15.00) * MIB}),
}


def _json(*args: str) -> dict:
    proc = run_cli("inspect", "--json", *args)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def minilm_gguf() -> Path:
    return ref_path("all-minilm-l6-v2-f16.gguf")


@pytest.fixture(scope="module")
def paths(smollm2_path, gemma3_path, minilm_gguf) -> dict[str, Path]:
    return {"smollm2": smollm2_path, "gemma3": gemma3_path, "minilm": minilm_gguf}


# ---- against gguf-py's GGUFReader ---------------------------------------------------------------
@pytest.mark.parametrize("name", ["smollm2", "gemma3", "minilm", "fixture"])
def test_json_matches_gguf_reader(paths, name):
    from gguf import GGUFReader

    path = paths[name] if name != "fixture" else ref_path("quant-fixture-f16.gguf")
    got = _json(str(path), "--tensors")
    reader = GGUFReader(path)

    # tensors: count, and count / bytes / elements by type
    assert got["tensors"]["count"] == len(reader.tensors) == got["file"]["n_tensors"]
    by_type: dict[str, list[int]] = {}
    for t in reader.tensors:
        e = by_type.setdefault(t.tensor_type.name, [0, 0, 0])
        e[0] += 1
        e[1] += int(t.n_bytes)
        e[2] += int(t.n_elements)
    assert {e["type"]: [e["count"], e["bytes"], e["n_elements"]] for e in got["tensors"]["by_type"]} == by_type
    total_bytes = sum(v[1] for v in by_type.values())
    total_params = sum(v[2] for v in by_type.values())
    assert got["tensors"]["bytes"] == total_bytes and got["tensors"]["n_params"] == total_params
    assert got["tensors"]["bpw"] == pytest.approx(total_bytes * 8 / total_params)
    listed = [(t["name"], t["type"], t["ne"], t["bytes"]) for t in got["tensor_list"]]
    assert listed == [(t.name, t.tensor_type.name, [int(d) for d in t.shape], int(t.n_bytes)) for t in reader.tensors]

    # metadata: every key, scalars equal, arrays by length and first entries
    fields = {k: f for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert set(got["metadata"]) == set(fields)
    assert got["file"]["n_metadata"] == len(fields)
    for key, field in fields.items():
        want, ours = field.contents(), got["metadata"][key]
        if isinstance(want, list):
            assert ours["length"] == len(want), key
            head = want[:8]
            assert ours["head"] == (head if isinstance(head[0], str) else pytest.approx(head)), key
        elif isinstance(want, float):
            assert ours == pytest.approx(want), key
        else:
            assert ours == want, key

    # facts derived from the metadata
    md = {k: f.contents() for k, f in fields.items()}
    assert got["architecture"] == md["general.architecture"]
    assert got["general"]["name"] == md.get("general.name")
    assert got["general"]["file_type"]["id"] == md["general.file_type"]
    assert got["tokenizer"]["n_vocab"] == len(md["tokenizer.ggml.tokens"])
    assert got["tokenizer"]["model"] == md.get("tokenizer.ggml.model")
    template = md.get("tokenizer.chat_template")
    assert got["chat_template"]["present"] == bool(template)
    if template:
        assert got["chat_template"]["n_lines"] == len(template.splitlines())
        assert got["chat_template"]["head"] == template.splitlines()[:8]
    arch = md["general.architecture"]
    h = got["hparams"]
    assert h["n_layer"] == md[f"{arch}.block_count"] and h["n_embd"] == md[f"{arch}.embedding_length"]
    assert h["n_ctx_train"] == md[f"{arch}.context_length"] and h["n_ff"] == md[f"{arch}.feed_forward_length"]
    assert h["n_head"] == md[f"{arch}.attention.head_count"]


def test_bert_hparams_match_the_encoder(minilm_gguf):
    """inspect reads bert's keys without torch; the encoder's own BertParams must agree."""
    from llamatorch.core.gguf_file import GGUFFile
    from llamatorch.core.models.bert import BertParams

    p = BertParams.from_gguf(GGUFFile(minilm_gguf))
    h = inspect(minilm_gguf).hparams
    for key in ("n_vocab", "n_embd", "n_layer", "n_head", "head_dim", "n_ff", "n_ctx_train", "norm_eps",
                "pooling_type", "causal"):
        assert h[key] == getattr(p, key), key
    assert h["pooling"] == "mean"


# ---- the KV cache -------------------------------------------------------------------------------
@pytest.mark.parametrize("name,n_ctx,dtype", [("smollm2", 0, "auto"), ("smollm2", 64, "f32"), ("gemma3", 64, "auto")])
def test_kv_bytes_equal_the_engines_allocation(paths, name, n_ctx, dtype):
    from llamatorch.core.engine import Engine

    engine = Engine(paths[name], n_ctx=n_ctx, dtype=dtype, threads=1)
    kv = inspect(paths[name], n_ctx, dtype).kv_cache
    assert kv["n_ctx"] == engine.n_ctx
    allocated = sum(t.numel() * t.element_size() for t in engine.cache.k + engine.cache.v)
    assert kv["llamatorch"]["bytes"] == allocated == engine.cache.nbytes()


@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_llama_cpp_figures(paths, name):
    ref = LLAMA_CPP[name]
    for n_ctx, nbytes in ref["kv"].items():
        assert inspect(paths[name], n_ctx).kv_cache["llama_cpp"]["bytes"] == nbytes, n_ctx
    proc = run_cli("inspect", str(paths[name]))
    assert proc.returncode == 0, proc.stderr
    for fact in (ref["file_type"], f"{ref['params']} in", f"{ref['bpw']} bits per weight"):
        assert fact in proc.stdout, fact


def test_ftype_names_cover_the_quantize_types():
    """Every type `llamatorch quantize` writes has llama.cpp's display name (Q4_K_M -> "Q4_K - Medium")."""
    from llamatorch.quantize.ftypes import FILE_TYPES

    sizes = {"S": "Small", "M": "Medium", "L": "Large"}
    for ft in FILE_TYPES:
        if ft.desc.startswith("alias"):
            continue
        m = re.fullmatch(r"(Q\d_K)_([SML])", ft.name)
        want = f"{m[1]} - {sizes[m[2]]}" if m else {"F32": "all F32", "Q2_K": "Q2_K - Medium"}.get(ft.name, ft.name)
        assert FTYPE_NAMES[ft.ftype] == want, ft.name


# ---- text output --------------------------------------------------------------------------------
def test_text_smollm2(paths):
    proc = run_cli("inspect", "-m", str(paths["smollm2"]))
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    out = proc.stdout
    for fact in ("llama", "30", "576", "9 query heads, 3 KV heads", "head size 64", "8192 tokens", "BPE", "smollm",
                 "49152 tokens", "<|im_start|>", "not added", "chatml", "Q4_1", "Q8_0", "180.00 MiB", "180.02 MiB",
                 "8193 cells", "tied"):
        assert fact in out, fact
    assert not any(line != line.rstrip() for line in out.splitlines())  # no padding at line ends


def test_text_gemma3(paths):
    out = run_cli("inspect", str(paths["gemma3"])).stdout
    for fact in ("gemma3", "Q4_K - Medium", "SPM", "262144 tokens", "<end_of_turn>", "added to every prompt",
                 "sliding window", "512 tokens on 15 of 18 layers", "QK-norm", "no tokenizer.chat_template",
                 "built-in 'gemma'", "111.00 MiB", "576.02 MiB", "1024 cells"):
        assert fact in out, fact


def test_text_embedding_model(minilm_gguf):
    out = run_cli("inspect", str(minilm_gguf)).stdout
    for fact in ("bert", "encoder", "WordPiece", "30522 tokens", "[CLS]", "mean (pooling_type 1)", "bidirectional",
                 "keeps no KV cache", "F16"):
        assert fact in out, fact
    assert "KV cache at" not in out


def test_ctx_size_and_dtype(paths):
    got = _json("-m", str(paths["smollm2"]), "-c", "1000", "--dtype", "f32")
    kv = got["kv_cache"]
    assert kv["n_ctx"] == 1000 and kv["dtype"] == "f32"
    assert kv["llamatorch"]["bytes"] == 30 * 2 * 3 * 64 * 1001 * 4
    assert kv["llama_cpp"]["bytes"] == 30 * 2 * 3 * 64 * 1024 * 2  # padded to 256 cells, f16
    assert 1000 in [s["n_ctx"] for s in kv["at_sizes"]]


def test_unknown_architecture_is_shown_not_refused(tmp_path):
    import gguf

    path = tmp_path / "mamba.gguf"
    w = gguf.GGUFWriter(str(path), "mamba")
    w.add_block_count(2)
    w.add_uint32("mamba.ssm.state_size", 16)
    w.add_tensor("token_embd.weight", np.zeros((10, 64), dtype=np.float32))
    w.add_tensor("blk.0.ssm_in.weight", np.zeros((128, 64), dtype=np.float16))
    w.add_tensor("blk.1.ssm_in.weight", np.zeros((128, 64), dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    proc = run_cli("inspect", str(path))
    assert proc.returncode == 0, proc.stderr
    assert "not supported by llamatorch's runtime" in proc.stdout and "ssm.state_size" in proc.stdout
    got = _json(str(path))
    assert got["runtime"]["supported"] is False and got["kv_cache"] is None
    assert got["hparams"] == {"block_count": 2, "ssm.state_size": 16}
    assert got["general"]["file_type"] == {"id": 1, "name": "(guessed) F16", "guessed": True}


# ---- errors and start-up ------------------------------------------------------------------------
def test_errors_are_one_line(tmp_path, paths):
    assert_clean_error(run_cli("inspect", str(tmp_path / "missing.gguf")), "not found")
    text = tmp_path / "notes.gguf"
    text.write_text("hello, I am not a GGUF file at all\n" * 4)
    assert_clean_error(run_cli("inspect", str(text)), "not a GGUF")
    src = paths["smollm2"]
    # cut in the vocabulary (the reader finds the merges cannot fit), cut in the tensor data
    for n, why in ((1 << 20, "corrupt GGUF header"), (src.stat().st_size - 4096, "truncated GGUF data")):
        cut = tmp_path / f"cut-{n}.gguf"
        with open(src, "rb") as f:
            cut.write_bytes(f.read(n))
        assert_clean_error(run_cli("inspect", "--json", str(cut)), why)
    assert_clean_error(run_cli("inspect", str(src), "-m", str(src)), "not both")
    assert_clean_error(run_cli("inspect", str(src), "--dtype", "q8"), "--dtype")
    assert_clean_error(run_cli("inspect", str(src), "-c", "-5"), "-c")


def test_starts_without_torch(paths):
    """inspect is metadata only: torch (and its ~1 s import) must stay out."""
    proc = run_cli("inspect", "--json", str(paths["gemma3"]), env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    modules = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "llamatorch.core.inspect_model" in modules
    assert "torch" not in modules and "transformers" not in modules


def test_model_name_resolves(paths):
    got = _json("smollm2")
    assert Path(got["file"]["path"]).name == paths["smollm2"].name
