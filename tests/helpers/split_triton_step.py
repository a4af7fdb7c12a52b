"""Run under torchrun on CUDA: the Triton decode step of this rank's slice of a model (replayed from a
CUDA graph, collectives captured) against the whole model's on rank 0.  Also at world size 1, where
the engine itself loads the whole model: the split path then runs as one slice, collectives and all.

    torchrun --standalone --nproc-per-node N tests/helpers/split_triton_step.py MODEL OUT

Rank 0 writes {"split": [steps, B, n_vocab], "whole": [...], "unsupported": reason or None} to OUT.
"""

from __future__ import annotations

import sys

import torch

B, STEPS, N_CTX = 3, 12, 64


def decode_all(model, device) -> torch.Tensor:
    """Logits of STEPS graphed Triton steps of B sequences, fed fixed tokens."""
    from llamatorch.core.cuda_graphs import GraphedDecode
    from llamatorch.core.kv_cache import KVCache

    c = model.config
    model.prepare(N_CTX)
    cache = KVCache(c.n_layer, B, model.kv_heads, N_CTX, model.kv_dim, model.dtype, device)
    graph = GraphedDecode.fused_decode(model, cache, B, device, long_context=False)
    out = []
    for pos in range(STEPS):
        tokens = [(7 * pos + 13 * s + 1) % c.n_vocab for s in range(B)]
        out.append(graph.run(tokens, [pos] * B).clone())
    return torch.stack(out).cpu()


def main() -> None:
    from llamatorch.core.gguf_file import GGUFFile
    from llamatorch.core.models.decoder import Decoder
    from llamatorch.core.models.triton_step import unsupported
    from llamatorch.core.parallel import runtime
    from llamatorch.core.parallel.shard import TensorSplit

    path, out = sys.argv[1], sys.argv[2]
    rt = runtime.init("tp")
    device = torch.device("cuda", torch.cuda.current_device())
    with torch.inference_mode():
        split = Decoder(GGUFFile(path), torch.bfloat16, device, split=TensorSplit(rt.rank, rt.world, rt.group_name))
        result = {"unsupported": unsupported(split)}
        if result["unsupported"] is None:
            result["split"] = decode_all(split, device)
        if rt.leader and result["unsupported"] is None:
            result["whole"] = decode_all(Decoder(GGUFFile(path), torch.bfloat16, device), device)
        if rt.leader:
            torch.save(result, out)
    runtime.shutdown()


if __name__ == "__main__":
    main()
