"""llama-embedding's output formats, byte for byte: '' (text), 'array', 'json', 'json+', 'raw'.

Everything here is what llama-embedding prints with LOG (stdout).  C's `%6.6s` counts bytes, so
prompts are cut as UTF-8 bytes; a cut inside a character is kept as surrogate escapes and written
back as the same bytes by `write_bytes`.
"""

from __future__ import annotations

import numpy as np

from . import pooling as P
from .embedding import EmbeddingResult

FORMATS = ("", "array", "json", "json+", "raw")


def _cs(s: str, width: int, prec: int | None = None) -> str:
    """C's %{width}.{prec}s on the UTF-8 bytes of s (right-aligned)."""
    b = s.encode("utf-8")
    if prec is not None:
        b = b[:prec]
    b = b.rjust(width)
    return b.decode("utf-8", errors="surrogateescape")


def _cos_matrix(v: np.ndarray) -> list[list[float]]:
    """common_embd_similarity_cos for every pair (float64 products of float32 values: exact)."""
    d = np.asarray(v, dtype=np.float32).astype(np.float64)
    dots = d @ d.T
    sq = np.diag(dots).copy()
    with np.errstate(divide="ignore", invalid="ignore"):
        sims = dots / (np.sqrt(sq)[:, None] * np.sqrt(sq)[None, :])
    zero = sq == 0.0
    sims[zero[:, None] | zero[None, :]] = 0.0
    sims[zero[:, None] & zero[None, :]] = 1.0
    return sims.astype(np.float32).tolist()


def render(res: EmbeddingResult, fmt: str, embd_norm: int) -> str:
    emb = res.vectors
    rows = emb.tolist()  # Python floats: exact float32 values, formatted much faster than numpy scalars
    n_count, n_out = emb.shape
    n_prompts = len(res.prompts)
    val = "%6.0f " if embd_norm == 0 else "%9.6f "
    out: list[str] = []
    if fmt == "":
        out.append("\n")
        if res.pooling == P.NONE:
            for j in range(n_count):
                out.append(f"embedding {j}: ")
                out.extend(val % x for x in rows[j][: min(3, n_out)])
                out.append(" ... ")
                out.extend(val % x for x in rows[j][n_out - 3 :])
                out.append("\n")
        elif res.pooling == P.RANK:
            labels = [(res.cls_labels[i] if i < len(res.cls_labels) and res.cls_labels[i] else str(i))
                      for i in range(res.n_cls_out)]
            for j in range(n_count):
                for i in range(res.n_cls_out):
                    if res.n_cls_out == 1:
                        out.append("rerank score %d: %8.3f\n" % (j, rows[j][0]))
                    else:
                        out.append("rerank score %d: %8.3f [%s]\n" % (j, rows[j][i], labels[i]))
        else:
            for j in range(n_prompts):
                out.append(f"embedding {j}: ")
                out.extend(val % x for x in rows[j][: (min(16, n_out) if n_prompts > 1 else n_out)])
                out.append("\n")
            if n_prompts > 1:
                out.append("\ncosine similarity matrix:\n\n")
                out.extend(_cs(p, 6, 6) + " " for p in res.prompts)
                out.append("\n")
                sims = _cos_matrix(emb[:n_prompts])
                for i in range(n_prompts):
                    out.extend("%6.2f " % s for s in sims[i])
                    out.append(_cs(res.prompts[i], 1, 10))
                    out.append("\n")
    if fmt in ("json", "json+", "array"):
        obj = fmt != "array"
        num = "%1.0f" if embd_norm == 0 else "%1.7f"
        out.append('{\n  "object": "list",\n  "data": [\n' if obj else "[")
        items = []
        for j in range(n_count):
            vec = "[" + ",".join(num % x for x in rows[j]) + "]"
            if obj:
                items.append(f'    {{\n      "object": "embedding",\n      "index": {j},\n      "embedding": {vec}\n    }}')
            else:
                items.append(vec)
        out.append((",\n" if obj else ",").join(items))
        out.append("\n  ]" if obj else "]\n")
        if fmt == "json+" and n_prompts > 1:
            out.append(',\n  "cosineSimilarity": [\n')
            sims = _cos_matrix(emb)
            out.append(",\n".join("    [" + ", ".join("%6.2f" % s for s in row) + " ]" for row in sims))
            out.append("\n  ]")
        if obj:
            out.append("\n}\n")
    elif fmt == "raw":
        cols = min(n_out, res.n_cls_out) if res.pooling == P.RANK else n_out
        num = "%1.0f" if embd_norm == 0 else "%1.7f"
        for j in range(n_count):
            out.append(" ".join(num % x for x in rows[j][:cols]) + "\n")
    out.append("\n")
    return "".join(out)


def write_bytes(stream, text: str) -> None:
    """Write text to a binary stream, turning surrogate escapes back into their bytes."""
    stream.write(text.encode("utf-8", errors="surrogateescape"))
    stream.flush()
