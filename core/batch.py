"""The engine <-> model contract.

`Batch` is what callers hand `Engine.decode`: llama.cpp's llama_batch, a flat list of tokens, each with a
position, a sequence id and a wants-logits flag.  `Step` is what the engine hands a model's forward: the
same tokens laid out as one padded [B, T] batch over the KV cache's rows, with the causal mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Batch:
    tokens: list[int] = field(default_factory=list)
    pos: list[int] = field(default_factory=list)
    seq: list[int] = field(default_factory=list)
    logits: list[bool] = field(default_factory=list)

    def add(self, token: int, pos: int, seq: int = 0, logits: bool = False) -> None:
        self.tokens.append(int(token))
        self.pos.append(int(pos))
        self.seq.append(int(seq))
        self.logits.append(bool(logits))

    @classmethod
    def sequence(cls, tokens, start: int = 0, seq: int = 0, all_logits: bool = False) -> "Batch":
        """Consecutive tokens of one sequence; logits for the last one (or all)."""
        n = len(tokens)
        return cls(list(map(int, tokens)), list(range(start, start + n)), [seq] * n,
                   [all_logits or i == n - 1 for i in range(n)])

    def __len__(self) -> int:
        return len(self.tokens)


@dataclass
class Step:
    """One forward's batch layout (built by the engine), shared by every layer.

    tokens/positions: [B, T]; valid: [B, T] False for padding; rows: [B] cache rows; write_pos: [B, T]
    cells written (padding -> trash cell); mask: [B, 1, T, S] causal, True where a query may attend a
    key; S = cells visible this step.  Models with other attention patterns (sliding windows,
    bidirectional encoders) derive their own masks from positions/valid.
    """

    tokens: torch.Tensor
    positions: torch.Tensor
    valid: torch.Tensor
    rows: torch.Tensor
    write_pos: torch.Tensor
    mask: torch.Tensor
    n_visible: int
    rows_contiguous: tuple[int, int] | None  # (first, count) when rows are a plain range
    write_start: int | None = None  # with contiguous rows: every row writes cells start..start+T-1
    all_visible: bool = False  # every query sees every cell (one sequence's decode): no mask needed
    _biases: dict = field(default_factory=dict, repr=False)  # additive masks, built once per forward

    def attention_bias(self, mask: torch.Tensor, group: int, dtype: torch.dtype) -> torch.Tensor:
        """mask [B, 1, T, S] (bool) -> additive bias [B, 1, group*T, S] for grouped queries (see attend)."""
        key = (id(mask), group, dtype)
        hit = self._biases.get(key)
        if hit is None:
            B, _, T, S = mask.shape
            m = mask[:, :, None].expand(B, 1, group, T, S).reshape(B, 1, group * T, S)
            bias = torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill_(~m, float("-inf"))
            hit = self._biases[key] = (mask, bias)  # keep `mask` alive so its id stays unique
        return hit[1]
