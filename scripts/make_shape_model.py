#!/usr/bin/env python3
"""Write a random-weight llama (or gemma3) GGUF with the exact shapes and block types of a real model.

For speed work where the real file cannot travel (the GPU machine): the bytes of each quantized
tensor are random blocks with small, finite scales, so the kernels and the traffic are the real ones.

    python scripts/make_shape_model.py --shape smollm2 --type q4_1 --out /tmp/smollm2-q4_1.gguf
    python scripts/make_shape_model.py --shape llama1b --type q4_0 --out /tmp/llama1b-q4_0.gguf
    python scripts/make_shape_model.py --shape gemma3-270m --type q8_0 --out /tmp/gemma3-270m-q8_0.gguf
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

SHAPES = {
    # name: (n_embd, n_layer, n_head, n_head_kv, n_ff, n_vocab, rope_base, ctx)
    "smollm2": (576, 30, 9, 3, 1536, 49152, 100000.0, 8192),
    "llama1b": (2048, 16, 32, 8, 8192, 128256, 500000.0, 131072),
    "llama8b": (4096, 32, 32, 8, 14336, 128256, 500000.0, 131072),
    "gemma3-270m": (640, 18, 4, 1, 2048, 262144, 1000000.0, 32768),
    "gemma3-1b": (1152, 26, 4, 1, 6912, 262144, 1000000.0, 32768),
}
GEMMA3_HEAD = 256  # gemma3's key_length, not n_embd / n_head
GEMMA3_WINDOW = 512  # its local layers' sliding window (5 of every 6 layers)

T = None  # gguf.GGMLQuantizationType, set in main (keeps --help free of imports)

# offsets of the half-float scale fields inside one block, per type
HALF_FIELDS = {"Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0], "Q4_K": [0, 2],
               "Q5_K": [0, 2], "Q6_K": [208], "Q2_K": [80, 82], "Q3_K": [108]}


def random_tensor(rng, qtype, rows: int, cols: int):
    import gguf

    if qtype == gguf.GGMLQuantizationType.F32:
        return (rng.standard_normal((rows, cols)) * 0.02).astype(np.float32), None
    if qtype == gguf.GGMLQuantizationType.F16:
        return (rng.standard_normal((rows, cols)) * 0.02).astype(np.float16), None
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(rows, cols // block, type_size), dtype=np.uint8)
    for off in HALF_FIELDS[qtype.name]:
        scale = np.full((rows, cols // block, 1), 0.002, dtype=np.float16)
        if qtype.name == "Q6_K":  # int8 sub-scales up to 127: keep the product small
            scale[:] = 0.0002
        raw[..., off : off + 2] = scale.view(np.uint8)
    return raw.reshape(rows, -1), qtype


def mix(ftype: str):
    """Per-tensor types of llama-quantize's mix for this file type (close enough for traffic)."""
    G = T
    base = {"q4_0": G.Q4_0, "q4_1": G.Q4_1, "q8_0": G.Q8_0, "q4_k_m": G.Q4_K, "f16": G.F16}[ftype]
    embd = {"q4_1": G.Q8_0, "q8_0": G.Q8_0, "f16": G.F16}.get(ftype, G.Q6_K)
    return base, embd


def main() -> None:
    global T
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), required=True)
    ap.add_argument("--type", choices=["q4_0", "q4_1", "q8_0", "q4_k_m", "f16"], required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    import gguf

    from helpers.tiny_llama import byte_level_vocab

    T = gguf.GGMLQuantizationType
    D, L, H, HKV, FF, V, base, ctx = SHAPES[args.shape]
    gemma = args.shape.startswith("gemma3")
    hd = GEMMA3_HEAD if gemma else D // H
    qtype, embd_type = mix(args.type)
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(args.out, "gemma3" if gemma else "llama")
    w.add_name(f"random {args.shape} {args.type}")
    w.add_context_length(ctx)
    w.add_embedding_length(D)
    w.add_block_count(L)
    w.add_feed_forward_length(FF)
    w.add_head_count(H)
    w.add_head_count_kv(HKV)
    w.add_rope_freq_base(base)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(hd)
    if gemma:
        w.add_key_length(hd)
        w.add_value_length(hd)
        w.add_sliding_window(GEMMA3_WINDOW)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(byte_level_vocab(V))
    w.add_token_types([1] * V)
    w.add_token_merges(["Ġ Ġ"])
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    w.add_add_bos_token(False)

    def add(name, rows, cols, t):
        data, raw_type = random_tensor(rng, t, rows, cols)
        if raw_type is None:
            w.add_tensor(name, data)
        else:
            w.add_tensor(name, data, raw_dtype=raw_type)

    add("token_embd.weight", V, D, embd_type)
    w.add_tensor("output_norm.weight", np.ones(D, dtype=np.float32))
    for i in range(L):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(D, dtype=np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(D, dtype=np.float32))
        add(f"blk.{i}.attn_q.weight", H * hd, D, qtype)
        add(f"blk.{i}.attn_k.weight", HKV * hd, D, qtype)
        add(f"blk.{i}.attn_v.weight", HKV * hd, D, qtype)
        add(f"blk.{i}.attn_output.weight", D, H * hd, qtype)
        add(f"blk.{i}.ffn_gate.weight", FF, D, qtype)
        add(f"blk.{i}.ffn_up.weight", FF, D, qtype)
        add(f"blk.{i}.ffn_down.weight", D, FF, qtype)
        if gemma:
            for name, n in (("attn_q_norm", hd), ("attn_k_norm", hd), ("post_attention_norm", D), ("post_ffw_norm", D)):
                w.add_tensor(f"blk.{i}.{name}.weight", np.ones(n, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(args.out)


if __name__ == "__main__":
    main()
