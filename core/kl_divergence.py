"""KL divergence of a model against a base file: llama-perplexity's `kl_divergence()` statistics.

Per scored token, with Q the evaluated model and P the base model's stored (16-nat, uint16-packed)
log-probabilities: KLD = sum_i p_i (log p_i - log q_i) over the tokens with log p_i > -16, the
probability difference of the actual next token, and whether both models agree on the top token.
The printed block (table per chunk, then perplexity / KL / Δp statistics) follows llama.cpp's layout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from .kl_base import unpack_log_probs
from .perplexity import row_block

TABLE_HEADER = ("chunk             PPL               ln(PPL(Q)/PPL(base))          KL Divergence"
                "              Δp RMS            Same top p")


def mean_and_uncertainty(s: float, s2: float, count: int) -> tuple[float, float]:
    if count < 1:
        return 0.0, 0.0
    f = s / count
    df = s2 / count - f * f
    df = math.sqrt(df / (count - 1)) if df > 0 and count > 10 else 0.0
    return f, df


def covariance(sa: float, sb: float, sab: float, count: int) -> float:
    if count < 10:
        return 0.0
    return (sab / count - (sa / count) * (sb / count)) / (count - 1)


def _sqrt(x: float) -> float:
    return math.sqrt(x) if x >= 0 else float("nan")


def percentile(values: np.ndarray, fraction: float) -> float:
    """llama.cpp's linear interpolation between sorted values, in float32 as it computes it."""
    f = np.float32(fraction)
    if f <= 0:
        return float(values[0])
    if f >= 1:
        return float(values[-1])
    p = np.float32(f * np.float32(len(values) - 1))
    ip = int(p)
    p = np.float32(p - np.float32(ip))
    a, b = values[ip], values[min(ip + 1, len(values) - 1)]
    return float(np.float32(np.float32(1) - p) * a + p * b)


def median(values: np.ndarray) -> float:
    n = len(values)
    if n % 2 == 0:
        return float(np.float32(0.5) * (values[n // 2] + values[n // 2 - 1]))
    return float(values[n // 2])


@dataclass
class KLStats:
    sum_nll: float = 0.0
    sum_nll2: float = 0.0
    sum_nll_base: float = 0.0
    sum_nll_base2: float = 0.0
    sum_nll_nll_base: float = 0.0
    sum_kld: float = 0.0
    sum_kld2: float = 0.0
    sum_p_diff: float = 0.0
    sum_p_diff2: float = 0.0
    sum_p_diff4: float = 0.0
    max_p_diff: float = 0.0
    n_same_top: int = 0
    count: int = 0
    kld_values: list[np.ndarray] = field(default_factory=list)
    p_diff_values: list[np.ndarray] = field(default_factory=list)

    def add_chunk(self, logits: torch.Tensor, base_rows: np.ndarray, targets: np.ndarray) -> None:
        """logits: [n, n_vocab] float32 of the evaluated model; base_rows: [n, nv] packed uint16."""
        step = row_block(logits.shape[1])
        for i in range(0, logits.shape[0], step):  # slices keep the [rows, n_vocab] temporaries in cache
            self._add_rows(logits[i : i + step], base_rows[i : i + step], targets[i : i + step])

    def _add_rows(self, logits: torch.Tensor, base_rows: np.ndarray, targets: np.ndarray) -> None:
        logits = logits.float()
        n, n_vocab = logits.shape
        dev = logits.device
        tgt = torch.from_numpy(np.asarray(targets, dtype=np.int64))[:, None].to(dev)
        imax = logits.argmax(dim=-1)
        log_norm = torch.logsumexp(logits, dim=-1)  # log of the softmax denominator
        nll = log_norm - logits.gather(1, tgt)[:, 0]
        base = unpack_log_probs(base_rows, n_vocab).to(dev)  # [n, n_vocab] log p, float32
        nll_base = -base.gather(1, tgt)[:, 0]
        imax_base = base.argmax(dim=-1)  # first maximum, as llama.cpp's strict '>' scan
        terms = torch.exp(base) * (base - logits + log_norm[:, None])
        kld = torch.where(base > -16.0, terms, torch.zeros_like(terms)).sum(dim=-1, dtype=torch.float64)
        p_diff = torch.exp(-nll) - torch.exp(-nll_base)

        nll_d, nll_b = nll.double(), nll_base.double()
        self.sum_nll += float(nll_d.sum())
        self.sum_nll2 += float((nll * nll).double().sum())
        self.sum_nll_base += float(nll_b.sum())
        self.sum_nll_base2 += float((nll_base * nll_base).double().sum())
        self.sum_nll_nll_base += float((nll * nll_base).double().sum())
        self.sum_kld += float(kld.sum())
        self.sum_kld2 += float((kld * kld).sum())
        pd = p_diff.double()
        self.sum_p_diff += float(pd.sum())
        pd2 = pd * pd
        self.sum_p_diff2 += float(pd2.sum())
        self.sum_p_diff4 += float((pd2 * pd2).sum())
        self.max_p_diff = max(self.max_p_diff, float(p_diff.abs().max()))
        self.n_same_top += int((imax == imax_base).sum())
        self.count += n
        self.kld_values.append(kld.float().cpu().numpy())
        self.p_diff_values.append(p_diff.cpu().numpy())

    # ---- figures -------------------------------------------------------------------------------
    def _ppl_parts(self):
        log_ppl = mean_and_uncertainty(self.sum_nll, self.sum_nll2, self.count)
        log_base = mean_and_uncertainty(self.sum_nll_base, self.sum_nll_base2, self.count)
        cov = covariance(self.sum_nll, self.sum_nll_base, self.sum_nll_nll_base, self.count)
        return log_ppl, log_base, cov

    @property
    def mean_kld(self) -> float:
        return mean_and_uncertainty(self.sum_kld, self.sum_kld2, self.count)[0]

    @property
    def same_top(self) -> float:
        return self.n_same_top / self.count if self.count else 0.0

    def chunk_line(self, chunk_number: int) -> str:
        """The running table row llama.cpp prints after each chunk."""
        log_ppl, log_base, cov = self._ppl_parts()
        ppl = math.exp(log_ppl[0])
        ratio = log_ppl[0] - log_base[0]
        ratio_unc = _sqrt(log_ppl[1] ** 2 + log_base[1] ** 2 - 2.0 * cov)
        kl = mean_and_uncertainty(self.sum_kld, self.sum_kld2, self.count)
        mse = mean_and_uncertainty(self.sum_p_diff2, self.sum_p_diff4, self.count)
        rms = math.sqrt(mse[0])
        rms_unc = 0.5 / rms * mse[1] if rms > 0 else float("nan")
        top = self.same_top
        top_unc = _sqrt(top * (1 - top) / (self.count - 1)) if self.count > 1 else float("nan")
        return (f"{chunk_number:4d}"
                f"    {ppl:9.4f} ± {ppl * log_ppl[1]:9.4f}"
                f"    {ratio:10.5f} ± {ratio_unc:10.5f}"
                f"    {kl[0]:10.5f} ± {kl[1]:10.5f}"
                f"    {100 * rms:6.3f} ± {100 * rms_unc:6.3f} %"
                f"    {100 * top:6.3f} ± {100 * top_unc:6.3f} %")

    def report(self) -> list[str]:
        """The three statistics blocks (empty under 100 tokens, where llama.cpp prints none)."""
        if self.count < 100:
            return []
        kv = np.sort(np.concatenate(self.kld_values).astype(np.float32))
        pv = np.sort(np.concatenate(self.p_diff_values).astype(np.float32))
        log_ppl, log_base, cov = self._ppl_parts()
        ppl, ppl_base = math.exp(log_ppl[0]), math.exp(log_base[0])
        ppl_unc, ppl_base_unc = ppl * log_ppl[1], ppl_base * log_base[1]
        cor = cov / (log_ppl[1] * log_base[1]) if log_ppl[1] * log_base[1] != 0 else float("nan")
        ratio = log_ppl[0] - log_base[0]
        ratio_unc = _sqrt(log_ppl[1] ** 2 + log_base[1] ** 2 - 2.0 * cov)
        diff_unc = _sqrt(ppl_unc ** 2 + ppl_base_unc ** 2 - 2.0 * ppl * ppl_base * cov)
        out = [
            "====== Perplexity statistics ======",
            f"Mean PPL(Q)                   : {ppl:10.6f} ± {ppl_unc:10.6f}",
            f"Mean PPL(base)                : {ppl_base:10.6f} ± {ppl_base_unc:10.6f}",
            f"Cor(ln(PPL(Q)), ln(PPL(base))): {100 * cor:6.2f}%",
            f"Mean ln(PPL(Q)/PPL(base))     : {ratio:10.6f} ± {ratio_unc:10.6f}",
            f"Mean PPL(Q)/PPL(base)         : {math.exp(ratio):10.6f} ± {math.exp(ratio) * ratio_unc:10.6f}",
            f"Mean PPL(Q)-PPL(base)         : {ppl - ppl_base:10.6f} ± {diff_unc:10.6f}",
            "",
            "====== KL divergence statistics ======",
        ]
        kl = mean_and_uncertainty(self.sum_kld, self.sum_kld2, self.count)
        out.append(f"Mean    KLD: {kl[0]:10.6f} ± {kl[1]:10.6f}")
        out.append(f"Maximum KLD: {kv[-1]:10.6f}")
        for label, fr in (("99.9%", 0.999), ("99.0%", 0.990), ("95.0%", 0.950), ("90.0%", 0.900)):
            out.append(f"{label}   KLD: {percentile(kv, fr):10.6f}")
        out.append(f"Median  KLD: {median(kv):10.6f}")
        for label, fr in ((("10.0%"), 0.100), (" 5.0%", 0.050), (" 1.0%", 0.010), (" 0.1%", 0.001)):
            out.append(f"{label}   KLD: {percentile(kv, fr):10.6f}")
        out.append(f"Minimum KLD: {kv[0]:10.6f}")
        out += ["", "====== Token probability statistics ======"]
        pdm = mean_and_uncertainty(self.sum_p_diff, self.sum_p_diff2, self.count)
        out.append(f"Mean    Δp: {100 * pdm[0]:6.3f} ± {100 * pdm[1]:5.3f} %")
        out.append(f"Maximum Δp: {100 * pv[-1]:6.3f}%")
        for label, fr in (("99.9%", 0.999), ("99.0%", 0.990), ("95.0%", 0.950), ("90.0%", 0.900), ("75.0%", 0.750)):
            out.append(f"{label}   Δp: {100 * percentile(pv, fr):6.3f}%")
        out.append(f"Median  Δp: {100 * median(pv):6.3f}%")
        for label, fr in (("25.0%", 0.250), ("10.0%", 0.100), (" 5.0%", 0.050), (" 1.0%", 0.010), (" 0.1%", 0.001)):
            out.append(f"{label}   Δp: {100 * percentile(pv, fr):6.3f}%")
        out.append(f"Minimum Δp: {100 * pv[0]:6.3f}%")
        mse = mean_and_uncertainty(self.sum_p_diff2, self.sum_p_diff4, self.count)
        rms = math.sqrt(mse[0])
        rms_unc = 0.5 / rms * mse[1] if rms > 0 else float("nan")
        out.append(f"RMS Δp    : {100 * rms:6.3f} ± {100 * rms_unc:5.3f} %")
        top = self.same_top
        out.append(f"Same top p: {100 * top:6.3f} ± {100 * _sqrt(top * (1 - top) / (self.count - 1)):5.3f} %")
        return out


def run_kl_divergence(engine, reader, n_batch: int, bos_id: int | None, on_chunk=None, on_first_pass=None) -> KLStats:
    """Evaluate the tokens stored in `reader` (a kl_base.BaseReader) and compare with its log-probs.

    on_chunk(index, stats) after each chunk; on_first_pass(seconds) after the first forward group."""
    from .perplexity import evaluate_chunks

    h = reader.header
    first = h.n_ctx // 2
    stats = KLStats()
    tokens = reader.tokens
    for group in evaluate_chunks(engine, tokens, h.n_ctx, h.n_chunk, n_batch, bos_id):
        if group.first_chunk == 0 and on_first_pass is not None:
            on_first_pass(group.seconds)
        for s, logits in enumerate(group.logits):
            c = group.first_chunk + s
            start = c * h.n_ctx + first
            stats.add_chunk(logits, reader.read_chunk(), tokens[start + 1 : start + 1 + logits.shape[0]])
            if on_chunk is not None:
                on_chunk(c, stats)
    return stats
