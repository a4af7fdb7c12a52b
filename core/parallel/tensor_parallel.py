"""The two exchanges of a tensor-parallel decoder (shard.py says who holds what).

- after each row-parallel product (attention output, down projection) every rank holds a partial
  sum of the full-width result: one all-reduce, in float32 (the residual stream's precision: partial
  products rounded to bf16 and then summed would round twice);
- the output matrix is split by vocabulary rows: each rank scores its share of the vocabulary, an
  all-gather joins the shares, so every rank ends with the whole row of logits (the sampler needs no
  distributed top-k, and rank 0 samples as it always does).
"""

from __future__ import annotations

import torch

from .runtime import all_gather_columns, all_reduce
from .shard import TensorSplit, vocab_span


def reducer(split: TensorSplit):
    """x (a rank's partial product) -> the sum over ranks, float32."""
    name = split.group_name

    def reduce(x: torch.Tensor) -> torch.Tensor:
        return all_reduce(x.float(), name)

    return reduce


class VocabParallelOutput:
    """The output matrix of one rank's vocabulary share, returning every rank's logits joined."""

    def __init__(self, local, n_vocab: int, split: TensorSplit):
        self.local, self.n_vocab = local, n_vocab
        self.world, self.group_name = split.world, split.group_name
        lo, hi, self.per_rank = vocab_span(n_vocab, split.rank, split.world)
        self.n_local = hi - lo
        self.quant = None  # (no Triton form of the whole matrix: the Triton step multiplies by .local's)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = self.local(x)
        return self.gather(y.reshape(-1, y.shape[-1])).reshape(*x.shape[:-1], self.n_vocab)

    def gather(self, y: torch.Tensor) -> torch.Tensor:
        """This rank's logits [N, n_local] -> every rank's, joined: [N, n_vocab] float32."""
        # (float32 on every rank: a short last share may take another kernel, whose logits are float32)
        y = y.float()
        if self.n_local < self.per_rank:  # the last share is shorter: pad it to the others' width
            y = torch.nn.functional.pad(y, (0, self.per_rank - self.n_local))
        return all_gather_columns(y, self.world, self.group_name)[:, : self.n_vocab].contiguous()

    @property
    def nbytes_decode(self) -> int:
        return self.local.nbytes_decode
