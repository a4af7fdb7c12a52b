"""What a GGUF file holds, explained: `inspect(path, n_ctx, dtype)` -> an `Inspection` of plain data.

One pass over the lean reader (no torch): the architecture's hyper-parameters as the models build them
(models/config.py), the tokenizer as `Vocab` derives it (special ids, EOT detection, add_bos), the chat
template's first lines, tensor bytes by ggml type, bits per weight as llama.cpp prints "BPW", and the KV
cache both as our engine allocates it and as llama.cpp does.  The same data drives text and `--json`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import LlamatorchError
from .gguf_file import GGUFFile
from .models import ARCHITECTURES
from .models.config import BUILDERS, decoder_config
from .models.hparams import check_attention, positive_float, positive_int, vocab_rows

# llama_ftype -> llama.cpp's llama_ftype_name (src/llama-model-loader.cpp)
FTYPE_NAMES = {
    0: "all F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K - Medium",
    11: "Q3_K - Small", 12: "Q3_K - Medium", 13: "Q3_K - Large", 14: "Q4_K - Small", 15: "Q4_K - Medium",
    16: "Q5_K - Small", 17: "Q5_K - Medium", 18: "Q6_K", 19: "IQ2_XXS - 2.0625 bpw", 20: "IQ2_XS - 2.3125 bpw",
    21: "Q2_K - Small", 22: "IQ3_XS - 3.3 bpw", 23: "IQ3_XXS - 3.0625 bpw", 24: "IQ1_S - 1.5625 bpw",
    25: "IQ4_NL - 4.5 bpw", 26: "IQ3_S - 3.4375 bpw", 27: "IQ3_S mix - 3.66 bpw", 28: "IQ2_S - 2.5 bpw",
    29: "IQ2_M - 2.7 bpw", 30: "IQ4_XS - 4.25 bpw", 31: "IQ1_M - 1.75 bpw", 32: "BF16", 36: "TQ1_0 - 1.69 bpw ternary",
    37: "TQ2_0 - 2.06 bpw ternary", 38: "MXFP4 MoE", 39: "NVFP4", 40: "Q1_0", 41: "Q2_0",
}
# the most common tensor type -> the ftype llama.cpp guesses when general.file_type is absent
_GUESS = {"F32": 0, "F16": 1, "BF16": 32, "Q4_0": 2, "Q4_1": 3, "Q5_0": 8, "Q5_1": 9, "Q8_0": 7, "Q2_K": 10,
          "Q3_K": 12, "Q4_K": 15, "Q5_K": 17, "Q6_K": 18, "TQ1_0": 36, "TQ2_0": 37, "IQ2_XXS": 19, "IQ2_XS": 20,
          "IQ2_S": 28, "IQ3_XXS": 23, "IQ1_S": 24, "IQ1_M": 31, "IQ4_NL": 25, "IQ4_XS": 30, "IQ3_S": 26}
TOKENIZER_KINDS = {
    "gpt2": ("BPE", "byte-level byte-pair encoding (GPT-2 style): text is split by the pre-tokenizer's regex, "
                    "then ranked merges join byte symbols"),
    "llama": ("SPM", "SentencePiece: pieces with scores, spaces as '▁', unknown characters fall back to byte tokens"),
    "bert": ("WordPiece", "greedy longest match within each word, '##' marks a continuation piece"),
    "t5": ("Unigram", "SentencePiece unigram model (T5)"),
    "rwkv": ("RWKV", "greedy trie match (RWKV world)"),
    "gemma4": ("BPE", "byte-pair encoding (Gemma 4)"),
    "none": ("none", "no tokenizer model (tokenizer.ggml.model absent or 'none')"),
}
KV_ITEMSIZE = {"f32": 4, "bf16": 2, "f16": 2}  # the engine's cache dtype is its compute dtype
LLAMA_CPP_UBATCH = 512  # llama.cpp's default n_ubatch: its SWA cache holds the window plus one ubatch
# llama.cpp's enum llama_pooling_type (as models/bert.py)
POOLING_NAMES = {-1: "unspecified", 0: "none", 1: "mean", 2: "cls", 3: "last", 4: "rank"}
KV_SIZES = (512, 2048, 8192, 32768, 131072)  # the extra context sizes the KV table shows


@dataclass
class Inspection:
    file: dict
    general: dict
    architecture: str | None
    runtime: dict  # supported, kind (decoder | encoder), note
    hparams: dict
    tokenizer: dict
    chat_template: dict
    tensors: dict
    kv_cache: dict | None
    metadata: dict = field(default_factory=dict)
    tensor_list: list | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def inspect(path: str | Path, n_ctx: int = 0, dtype: str = "auto", list_tensors: bool = False) -> Inspection:
    """Everything `llamatorch inspect` shows; n_ctx 0 means the training context (as the engine)."""
    if dtype not in ("auto", *KV_ITEMSIZE):
        raise LlamatorchError(f"unknown --dtype '{dtype}' (use auto, f32, bf16 or f16)")
    if n_ctx < 0:
        raise LlamatorchError(f"-c must be 0 (the training context) or positive, not {n_ctx}")
    f = GGUFFile(path)
    md = f.metadata
    runtime, hparams, config = _runtime(f)
    vocab, problem = load_vocab(md)
    return Inspection(
        file=dict(path=str(f.path), size=f.path.stat().st_size, gguf_version=f.version, alignment=f.alignment,
                  n_metadata=len(md), n_tensors=len(f.tensors), data_offset=f.data_offset),
        general=_general(f),
        architecture=f.architecture,
        runtime=runtime,
        hparams=hparams,
        tokenizer=tokenizer_info(md, vocab, problem),
        # an encoder has no chat: no fallback template to name
        chat_template=chat_template_info(md, f.architecture, vocab if runtime["kind"] != "encoder" else None),
        tensors=_tensors(f),
        kv_cache=_kv_cache(runtime, config, n_ctx, "bf16" if dtype == "auto" else dtype, dtype),
        metadata={k: jsonable(v) for k, v in md.items()},
        tensor_list=[dict(name=t.name, type=t.qtype.name, ne=list(t.ne), shape=list(t.shape),
                          n_elements=t.n_elements, bytes=t.nbytes, offset=t.offset) for t in f.tensors.values()]
        if list_tensors else None,
    )


# ---- general ----------------------------------------------------------------------------------
def _general(f: GGUFFile) -> dict:
    g = {k: f.get(f"general.{k}") for k in ("name", "basename", "finetune", "size_label", "organization",
                                              "license", "type", "quantization_version")}
    g["file_type"] = file_type(f)
    return g


def file_type(f: GGUFFile) -> dict:
    """general.file_type named as llama.cpp names it, or guessed from the most common tensor type as
    llama.cpp does (its tensors in (layer, name) order, the first type to reach the top count wins)."""
    raw = f.get("general.file_type")
    if raw is not None:
        return dict(id=int(raw), name=FTYPE_NAMES.get(int(raw), "unknown, may not work"), guessed=False)
    counts: dict[str, int] = {}
    best, top = "F32", 0
    for name in sorted(f.tensors, key=lambda n: (_layer(n), n)):
        t = f.tensors[name].qtype.name
        counts[t] = counts.get(t, 0) + 1
        if counts[t] > top:
            best, top = t, counts[t]
    ftype = _GUESS.get(best, 0)
    return dict(id=ftype, name=f"(guessed) {FTYPE_NAMES[ftype]}", guessed=True)


def _layer(name: str) -> int:
    parts = name.split(".")
    return int(parts[1]) if len(parts) > 2 and parts[0] == "blk" and parts[1].isdigit() else -1


# ---- architecture and hyper-parameters --------------------------------------------------------
def _runtime(f: GGUFFile) -> tuple[dict, dict, Any]:
    """(runtime support, hyper-parameters, the DecoderConfig or None).  A file our runtime cannot run
    still shows its raw `ARCH.*` keys: inspect is for looking, not for refusing."""
    arch = f.architecture
    known = sorted(ARCHITECTURES)
    if arch not in ARCHITECTURES:
        why = "no general.architecture" if arch is None else f"architecture '{arch}' is not supported"
        return (dict(supported=False, kind=None, note=f"{why} by llamatorch's runtime (supported: {', '.join(known)})"),
                _raw_hparams(f), None)
    if not f.tensors:
        return dict(supported=False, kind=None, note="the file has no tensors (vocab-only): nothing to run"), \
            _raw_hparams(f), None
    try:
        if arch in BUILDERS:
            config = decoder_config(f)
            hp = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}
            hp.update(n_gqa=config.n_head // config.n_head_kv, tied_embeddings="output.weight" not in f.tensors,
                      n_swa_layers=sum(config.swa_layers) if config.any_swa else 0)
            kind = "decoder"
        else:
            config, hp, kind = None, bert_hparams(f), "encoder"
    except LlamatorchError as e:
        return dict(supported=False, kind=None, note=f"llamatorch cannot run it: {e}"), _raw_hparams(f), None
    hp.update(_experts(f))
    return dict(supported=True, kind=kind, note=None), hp, config


def bert_hparams(f: GGUFFile) -> dict:
    """models/bert.py's BertParams, read the same way without importing torch (that module builds the
    encoder); tests hold the two equal."""
    key = lambda k: f"{f.architecture}.{k}"  # noqa: E731
    n_embd, n_head = positive_int(f, key("embedding_length")), positive_int(f, key("attention.head_count"))
    check_attention(f, n_embd, n_head, positive_int(f, key("attention.head_count_kv"), n_head), None)
    pooling = int(f.get(key("pooling_type"), -1))
    return dict(n_vocab=vocab_rows(f), n_embd=n_embd, n_layer=positive_int(f, key("block_count")), n_head=n_head,
                head_dim=n_embd // n_head, n_ff=positive_int(f, key("feed_forward_length")),
                n_ctx_train=positive_int(f, key("context_length")),
                norm_eps=positive_float(f, key("attention.layer_norm_epsilon")),
                pooling_type=pooling, pooling=POOLING_NAMES.get(pooling, "unknown"),
                causal=bool(f.get(key("attention.causal"), False)))


def _experts(f: GGUFFile) -> dict:
    keys = {"n_expert": "expert_count", "n_expert_used": "expert_used_count"}
    return {k: int(f.get(f"{f.architecture}.{v}")) for k, v in keys.items() if f.get(f"{f.architecture}.{v}")}


def _raw_hparams(f: GGUFFile) -> dict:
    prefix = f"{f.architecture}."
    return {k[len(prefix):]: jsonable(v) for k, v in f.metadata.items() if f.architecture and k.startswith(prefix)}


# ---- tokenizer and chat template --------------------------------------------------------------
_RAW_SPECIAL = {"bos": "bos_token_id", "eos": "eos_token_id", "eot": "eot_token_id", "unk": "unknown_token_id",
                "pad": "padding_token_id", "sep": "seperator_token_id", "mask": "mask_token_id"}


def load_vocab(md: dict):
    """(Vocab, None), or (None, why) where our tokenizer cannot read the file's."""
    from .tokenizer.vocab import Vocab

    try:
        return Vocab.from_metadata(md), None
    except LlamatorchError as e:
        return None, str(e)


def tokenizer_info(md: dict, vocab=None, problem: str | None = None) -> dict:
    """The tokenizer as llama.cpp derives it (Vocab: defaults, overrides, EOT found by its text), or
    the raw metadata where our tokenizer cannot load it."""
    model = md.get("tokenizer.ggml.model")
    tokens = md.get("tokenizer.ggml.tokens")
    tokens = tokens if isinstance(tokens, list) else []
    kind, explained = TOKENIZER_KINDS.get(model or "none", ("unknown", f"tokenizer model '{model}'"))
    info = dict(model=model, kind=kind, explained=explained, pre=md.get("tokenizer.ggml.pre"), n_vocab=len(tokens),
                n_merges=len(md.get("tokenizer.ggml.merges") or ()), has_scores="tokenizer.ggml.scores" in md,
                usable=vocab is not None, problem=problem)
    if vocab is None:
        raw = {k: int(md["tokenizer.ggml." + key]) for k, key in _RAW_SPECIAL.items() if "tokenizer.ggml." + key in md}
        info.update(add_bos=md.get("tokenizer.ggml.add_bos_token"), add_eos=md.get("tokenizer.ggml.add_eos_token"),
                    special={k: _token(tokens, i) for k, i in raw.items()}, eog=[])
        return info
    info.update(add_bos=vocab.add_bos, add_eos=vocab.add_eos,
                special={k: _token(vocab.tokens, i) for k, i in vocab.special.items() if i is not None},
                eog=[_token(vocab.tokens, i) for i in sorted(vocab.eog_ids)])
    return info


def _token(tokens: list, i: int) -> dict:
    return dict(id=int(i), text=tokens[i] if 0 <= i < len(tokens) else None)


def chat_template_info(md: dict, arch: str | None, vocab=None, n_head: int = 8) -> dict:
    """The template's first lines and size, the llama.cpp built-in it resembles; without one, the
    built-in `llamatorch cli` falls back to (chat_template.resolve's choice)."""
    from .chat_builtin import detect

    src = md.get("tokenizer.chat_template")
    others = sorted(k.split(".", 2)[2] for k in md if k.startswith("tokenizer.chat_template."))
    if isinstance(src, str) and src.strip():
        lines = src.splitlines()
        return dict(present=True, n_lines=len(lines), n_chars=len(src), head=lines[:n_head], resembles=detect(src),
                    named=others, fallback=None, fallback_why=None)
    fallback = why = None
    if vocab is not None:
        from .chat_template import _fallback_for
        from .tokenizer import Tokenizer

        fallback, why = _fallback_for(arch or "", Tokenizer(vocab))
    return dict(present=False, n_lines=0, n_chars=0, head=[], resembles=None, named=others, fallback=fallback,
                fallback_why=why)


# ---- tensors and the KV cache -----------------------------------------------------------------
def _tensors(f: GGUFFile) -> dict:
    """Count, bytes and parameters by ggml type; BPW as llama.cpp's print_info (tensor bytes * 8 / elements)."""
    by: dict[str, dict] = {}
    for t in f.tensors.values():
        e = by.setdefault(t.qtype.name, dict(type=t.qtype.name, count=0, bytes=0, n_elements=0))
        e["count"] += 1
        e["bytes"] += t.nbytes
        e["n_elements"] += t.n_elements
    total = sum(e["bytes"] for e in by.values())
    params = sum(e["n_elements"] for e in by.values())
    for e in by.values():
        e["share"] = e["bytes"] / total if total else 0.0
        e["bpw"] = e["bytes"] * 8 / e["n_elements"] if e["n_elements"] else 0.0
    return dict(count=len(f.tensors), bytes=total, n_params=params, bpw=total * 8 / params if params else 0.0,
                by_type=sorted(by.values(), key=lambda e: -e["bytes"]))


def _kv_group(label: str, layers: int, cells: int, c, itemsize: int, dtype: str) -> dict:
    nbytes = layers * 2 * c.n_head_kv * c.head_dim * cells * itemsize  # 2: one K and one V tensor per layer
    return dict(label=label, layers=layers, cells=cells, n_head_kv=c.n_head_kv, head_dim=c.head_dim,
                dtype=dtype, itemsize=itemsize, bytes=nbytes)


def engine_kv(c, n_ctx: int, dtype: str) -> dict:
    """What core/kv_cache.KVCache allocates for one sequence: every layer [n_head_kv, n_ctx + 1, head_dim]
    for K and for V (the extra cell takes padding writes), in the compute dtype."""
    g = _kv_group("layers", c.n_layer, n_ctx + 1, c, KV_ITEMSIZE[dtype], dtype)
    return dict(bytes=g["bytes"], groups=[g])


def _pad(n: int, to: int = 256) -> int:
    return (n + to - 1) // to * to


def llama_cpp_kv(c, n_ctx: int) -> dict:
    """llama.cpp's default f16 cache: n_ctx padded to 256 cells (llama_context); with a sliding window,
    the SWA layers get only window + n_ubatch cells, padded to 256 (llama_kv_cache_iswa)."""
    cells = _pad(n_ctx)
    if not c.any_swa:
        groups = [_kv_group("layers", c.n_layer, cells, c, 2, "f16")]
    else:
        n_swa_layers = sum(c.swa_layers)
        groups = [_kv_group("global layers", c.n_layer - n_swa_layers, cells, c, 2, "f16"),
                  _kv_group("sliding-window layers", n_swa_layers, _pad(min(cells, c.n_swa + LLAMA_CPP_UBATCH)),
                            c, 2, "f16")]
    return dict(bytes=sum(g["bytes"] for g in groups), groups=groups)


def _kv_cache(runtime: dict, config, n_ctx: int, cache_dtype: str, dtype_flag: str) -> dict | None:
    if runtime["kind"] == "encoder":
        return dict(applies=False, why="an encoder attends within each batch: it keeps no KV cache")
    if config is None:
        return None
    n = n_ctx or config.n_ctx_train
    sizes = sorted({s for s in KV_SIZES if s <= config.n_ctx_train} | {config.n_ctx_train, n})
    return dict(applies=True, n_ctx=n, dtype=cache_dtype, dtype_flag=dtype_flag,
                llamatorch=engine_kv(config, n, cache_dtype), llama_cpp=llama_cpp_kv(config, n),
                at_sizes=[dict(n_ctx=s, llamatorch=engine_kv(config, s, cache_dtype)["bytes"],
                               llama_cpp=llama_cpp_kv(config, s)["bytes"]) for s in sizes])


def jsonable(v: Any) -> Any:
    """A metadata value for JSON: arrays as their length and first 8 entries (a vocabulary is 262k)."""
    if isinstance(v, (list, np.ndarray)):
        head = v[:8].tolist() if isinstance(v, np.ndarray) else [jsonable(x) for x in v[:8]]
        return dict(length=len(v), head=head)
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN or infinity
    return v
