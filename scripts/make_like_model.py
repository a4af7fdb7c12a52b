#!/usr/bin/env python3
"""Random-weight copy of a real GGUF: same metadata (vocab left out), tensor names, shapes and block types.

For CPU/GPU speed work on a machine the real file cannot reach.  Two steps:

    python scripts/make_like_model.py spec REAL.gguf SPEC.json     # here: a few kB describing the file
    python scripts/make_like_model.py write SPEC.json OUT.gguf     # there: random blocks, same traffic
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def spec(real: str, out: str) -> None:
    from llamatorch.core.gguf_file import GGUFFile

    f = GGUFFile(real)
    meta = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in f.metadata.items()
            if not k.startswith("tokenizer.") and not k.startswith("GGUF.")}
    tensors = [[n, list(t.shape), int(t.qtype)] for n, t in f.tensors.items()]
    Path(out).write_text(json.dumps({"metadata": meta, "tensors": tensors}))


def write(spec_path: str, out: str) -> None:
    import gguf
    import make_shape_model as msm
    from helpers.tiny_llama import byte_level_vocab

    msm.T = gguf.GGMLQuantizationType
    s = json.loads(Path(spec_path).read_text())
    meta = s["metadata"]
    arch = meta.pop("general.architecture")
    w = gguf.GGUFWriter(out, arch)
    for k, v in meta.items():
        if isinstance(v, bool):
            w.add_bool(k, v)
        elif isinstance(v, int):
            w.add_uint32(k, v)
        elif isinstance(v, float):
            w.add_float32(k, v)
        elif isinstance(v, str):
            w.add_string(k, v)
        elif isinstance(v, list) and v and isinstance(v[0], str):
            w.add_array(k, v)
    n_vocab = next(shape[0] for n, shape, _ in s["tensors"] if n == "token_embd.weight")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(byte_level_vocab(n_vocab))
    w.add_token_types([1] * n_vocab)
    w.add_token_merges(["Ġ Ġ"])
    rng = np.random.default_rng(0)
    for name, shape, qtype in s["tensors"]:
        t = gguf.GGMLQuantizationType(qtype)
        if len(shape) == 1:  # norms: near 1 so activations stay tame
            w.add_tensor(name, (1.0 + 0.01 * rng.standard_normal(shape[0])).astype(np.float32))
            continue
        data, raw_type = msm.random_tensor(rng, t, shape[0], shape[1])
        w.add_tensor(name, data) if raw_type is None else w.add_tensor(name, data, raw_dtype=raw_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(out)


if __name__ == "__main__":
    {"spec": spec, "write": write}[sys.argv[1]](*sys.argv[2:])
