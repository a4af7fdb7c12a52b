"""Sequence pooling and embedding normalisation, as llama.cpp does them.

Pooling types carry llama.cpp's enum values (`llama_pooling_type`); GGUF files store them under
`{arch}.pooling_type`.  `normalize` and `cosine` follow common.cpp's `common_embd_normalize` and
`common_embd_similarity_cos` (float products summed in double), so printed digits match.
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import LlamatorchError

UNSPECIFIED, NONE, MEAN, CLS, LAST, RANK = -1, 0, 1, 2, 3, 4
POOLING_TYPES = {"none": NONE, "mean": MEAN, "cls": CLS, "last": LAST, "rank": RANK}
POOLING_NAMES = {v: k for k, v in POOLING_TYPES.items()}


def parse_pooling(name: str | None) -> int:
    """--pooling NAME -> enum value; None -> UNSPECIFIED (the model's default)."""
    if name is None or name == "":
        return UNSPECIFIED
    try:
        return POOLING_TYPES[name.strip().lower()]
    except KeyError:
        raise LlamatorchError(f"unknown pooling type '{name}' (use none, mean, cls, last or rank)") from None


def resolve_pooling(requested: int, model_default: int) -> int:
    """llama.cpp's rule: the user's choice, else the model's, else none."""
    if requested != UNSPECIFIED:
        return requested
    return model_default if model_default != UNSPECIFIED else NONE


def pool(states: torch.Tensor, lengths: list[int], kind: int) -> torch.Tensor:
    """states: [sum(lengths), D] token states of consecutive sequences -> [n_seq, D].

    mean: average over the sequence's tokens; cls: its first token; last: its last token
    (rank pools like cls, the classifier head is applied by the caller).
    """
    if kind == NONE:
        return states
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    if kind in (CLS, RANK):
        return states[torch.from_numpy(starts)]
    if kind == LAST:
        return states[torch.from_numpy(starts + np.asarray(lengths) - 1)]
    if kind == MEAN:
        seg = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
        out = torch.zeros(len(lengths), states.shape[1], dtype=states.dtype)
        out.index_add_(0, seg.to(states.device), states)
        return out / torch.tensor(lengths, dtype=states.dtype)[:, None]
    raise LlamatorchError(f"unsupported pooling type {kind}")


def normalize(x: np.ndarray, embd_norm: int) -> np.ndarray:
    """Rows of x (float32) scaled as common_embd_normalize: -1 none, 0 max-abs to int16 range,
    2 euclidean, any other p: p-norm (1 = taxicab)."""
    x = np.asarray(x, dtype=np.float32)
    if embd_norm == -1:
        return x.copy()
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        if embd_norm == 0:
            s = np.abs(x).max(axis=-1).astype(np.float64) / 32760.0
        elif embd_norm == 2:
            s = np.sqrt((x * x).astype(np.float64).sum(axis=-1))
        else:
            s = np.power(np.abs(x).astype(np.float64), embd_norm).sum(axis=-1) ** (1.0 / embd_norm)
        scale = np.where(s > 0.0, 1.0 / np.where(s > 0.0, s, 1.0), 0.0).astype(np.float32)
    return x * scale[..., None]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """common_embd_similarity_cos: two zero vectors are similar (1), one zero vector is not (0)."""
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    s = float((a * b).astype(np.float64).sum())
    s1 = float((a * a).astype(np.float64).sum())
    s2 = float((b * b).astype(np.float64).sum())
    if s1 == 0.0 or s2 == 0.0:
        return 1.0 if s1 == 0.0 and s2 == 0.0 else 0.0
    return float(np.float32(s / (np.sqrt(s1) * np.sqrt(s2))))
