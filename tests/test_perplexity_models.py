"""`llamatorch perplexity` on the real models against llama.cpp's numbers (../shared/ref).

Kept lean for CI: each model's 20-chunk run happens once (module fixture, fast path); the KL tests
work on 4 chunks of 128 tokens. The quantization chain (five more 20-chunk runs) is opt-in:
LLAMATORCH_QUANT_CHAIN=1.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import load_ref, ref_path, run_cli

from llamatorch.core.models import ARCHITECTURES

TOL = 0.0075  # 0.75% of llama.cpp's value
REF_NAMES = {"smollm2": "smollm2-135m-instruct-q4_1", "gemma3": "gemma3-270m-q4_k_m"}


def parse_ppl(stdout: str) -> tuple[list[float], float, float]:
    cumulative = [float(v) for v in re.findall(r"\[\d+\]([0-9.]+),", stdout)]
    m = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", stdout)
    assert m, stdout
    return cumulative, float(m.group(1)), float(m.group(2))


def run_ppl(model_path, *extra) -> tuple[list[float], float, float]:
    proc = run_cli("perplexity", "-m", str(model_path), "-f", str(_ref_text()), "-c", "512", "--chunks", "20",
                   *extra, timeout=900)
    assert proc.returncode == 0, proc.stderr
    return parse_ppl(proc.stdout)


def _ref_text():
    return ref_path("ppl_text.txt")


def check_against(ref: dict, cumulative: list[float], ppl: float, err: float) -> None:
    assert len(cumulative) == len(ref["cumulative_ppl"]) == 20
    for i, (ours, theirs) in enumerate(zip(cumulative, ref["cumulative_ppl"])):
        assert abs(ours / theirs - 1) <= TOL, f"chunk {i + 1}: {ours} vs llama.cpp {theirs}"
    assert abs(ppl / ref["ppl"] - 1) <= TOL, (ppl, ref["ppl"])
    # float math lands a little below llama.cpp (which quantizes activations to 8 bits); above is a bug
    assert ppl < ref["ppl"], (ppl, ref["ppl"])
    assert abs(err / ref["ppl_err"] - 1) <= 0.02, (err, ref["ppl_err"])


@pytest.fixture(scope="module")
def smollm2_result(smollm2_path):
    return run_ppl(smollm2_path)


@pytest.mark.slow
def test_smollm2_perplexity_matches_llama_cpp(smollm2_result):
    check_against(load_ref("perplexity.json")[REF_NAMES["smollm2"]], *smollm2_result)


@pytest.mark.slow
@pytest.mark.skipif("gemma3" not in ARCHITECTURES, reason="the gemma3 architecture is not implemented yet")
def test_gemma3_perplexity_matches_llama_cpp(gemma3_path):
    check_against(load_ref("perplexity.json")[REF_NAMES["gemma3"]], *run_ppl(gemma3_path))


@pytest.mark.slow
def test_batch_smaller_than_context_gives_same_numbers(smollm2_path):
    # -b 64 < -c 128: each chunk goes through two forwards over the KV cache (llama.cpp's num_batches > 1)
    def run(b):
        proc = run_cli("perplexity", "-m", str(smollm2_path), "-f", str(ref_path("ppl_text.txt")), "-c", "128",
                       "--chunks", "2", "-b", b, "--dtype", "f32")
        assert proc.returncode == 0, proc.stderr
        return parse_ppl(proc.stdout)

    (c1, p1, _), (c2, p2, _) = run("2048"), run("64")
    assert np.allclose(c1, c2, rtol=2e-5) and abs(p1 / p2 - 1) < 2e-5


# ---- KL divergence -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2_copies(smollm2_path, tmp_path_factory):
    """The F16 copy of SmolLM2 and its Q4_0 quantization, made with our `quantize`."""
    d = tmp_path_factory.mktemp("quant")
    f16, q4 = d / "smollm2-f16.gguf", d / "smollm2-q4_0.gguf"
    for args in (("--allow-requantize", str(smollm2_path), str(f16), "F16"), (str(f16), str(q4), "Q4_0")):
        proc = run_cli("quantize", *args)
        assert proc.returncode == 0, proc.stderr
    return {"F16": f16, "Q4_0": q4, "dir": d}


def parse_kl(stdout: str) -> dict[str, float]:
    def grab(label: str) -> float:
        m = re.search(re.escape(label) + r"\s*:?\s*(-?[0-9.]+)", stdout)
        assert m, (label, stdout)
        return float(m.group(1))

    return {"kld": grab("Mean    KLD:"), "same_top": grab("Same top p:"), "ppl_base": grab("Mean PPL(base)"),
            "ppl_q": grab("Mean PPL(Q)")}


@pytest.mark.slow
def test_kl_divergence_against_llama_cpp_base(smollm2_copies):
    proc = run_cli("perplexity", "-m", str(smollm2_copies["Q4_0"]), "--kl-divergence-base",
                   str(ref_path("kl-base-smollm2-f16-c128.bin")), "--kl-divergence")
    assert proc.returncode == 0, proc.stderr
    got = parse_kl(proc.stdout)
    assert abs(got["kld"] / 0.270521 - 1) <= 0.10, got
    assert abs(got["same_top"] - 69.048) <= 3.0, got
    assert got["ppl_base"] == pytest.approx(35.995318, abs=2e-6)  # decoded from their file alone
    assert proc.stdout.splitlines()[0].startswith("chunk             PPL")
    assert len([ln for ln in proc.stdout.splitlines() if re.match(r"^\s+[1-4]\s", ln)]) == 4


@pytest.mark.slow
def test_written_base_file_matches_llama_cpp(smollm2_copies):
    from llamatorch.core.kl_base import BaseReader, unpack_log_probs

    ours_path = smollm2_copies["dir"] / "base-f16-c128.bin"
    proc = run_cli("perplexity", "-m", str(smollm2_copies["F16"]), "-f", str(ref_path("ppl_text.txt")),
                   "-c", "128", "--chunks", "4", "--kl-divergence-base", str(ours_path))
    assert proc.returncode == 0, proc.stderr
    theirs_path = ref_path("kl-base-smollm2-f16-c128.bin")
    assert ours_path.read_bytes()[: 20 + 4 * 512] == theirs_path.read_bytes()[: 20 + 4 * 512]  # header, tokens
    assert ours_path.stat().st_size == theirs_path.stat().st_size
    ours, theirs = BaseReader(ours_path), BaseReader(theirs_path)
    for _ in range(4):
        a = unpack_log_probs(theirs.read_chunk(), 49152)
        b = unpack_log_probs(ours.read_chunk(), 49152)
        top = a.topk(5, dim=-1).indices
        assert float((a.gather(1, top) - b.gather(1, top)).abs().max()) <= 0.05
    ours.close()
    theirs.close()
    # and our reader takes our file: KL of the F16 copy against its own base is ~0
    proc = run_cli("perplexity", "-m", str(smollm2_copies["F16"]), "--dtype", "f32",
                   "--kl-divergence-base", str(ours_path), "--kl-divergence")
    assert proc.returncode == 0, proc.stderr
    got = parse_kl(proc.stdout)
    assert got["kld"] < 1e-3 and got["same_top"] > 99.0, got


# ---- quantization chain --------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("qtype", ["F16", "Q8_0", "Q6_K", "Q4_K_M", "Q4_0"])
def test_quant_chain_perplexity(smollm2_copies, qtype):
    ref = load_ref("quant_chain.json")["results"][qtype]
    path = smollm2_copies.get(qtype)
    if path is None:
        path = smollm2_copies["dir"] / f"smollm2-{qtype.lower()}.gguf"
        proc = run_cli("quantize", str(smollm2_copies["F16"]), str(path), qtype)
        assert proc.returncode == 0, proc.stderr
    assert path.stat().st_size == ref["size_bytes"]
    _, ppl, _ = run_ppl(path)
    print(f"{qtype}: PPL {ppl:.4f}, llama.cpp {ref['ppl']:.4f} ({100 * (ppl / ref['ppl'] - 1):+.2f}%)")
    assert abs(ppl / ref["ppl"] - 1) <= TOL, (qtype, ppl, ref["ppl"])


def test_parse_helpers():
    out = "[1]28.6465,[2]43.0847,\nFinal estimate: PPL = 43.0847 +/- 1.78466\n"
    assert parse_ppl(out) == ([28.6465, 43.0847], 43.0847, 1.78466)
    assert np.isclose(parse_kl("Mean    KLD:   0.270521 ± 0.01\nSame top p: 69.048 ± 2.9 %\n"
                               "Mean PPL(Q)                   :  41.48 ± 8\nMean PPL(base)                :  35.99 ± 7\n")
                      ["kld"], 0.270521)
