"""Cost of constrained generation per token: llguidance's mask computation (plus our unpack and masking)
while greedy decoding follows a JSON schema, on the real models' vocabularies.

    python scripts/bench_grammar.py [--tokens 64]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from llamatorch.core import grammar, hub
from llamatorch.core.engine import Engine
from llamatorch.core.generate import generate
from llamatorch.core.sampling import Sampler, SamplerParams

SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                                           "tags": {"type": "array", "items": {"type": "string"}}},
          "required": ["name", "age", "tags"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=64)
    args = ap.parse_args()
    print(f"cpu: {platform.processor() or platform.machine()}, torch {torch.__version__}")
    compiled = grammar.compile_grammar("json_schema", SCHEMA)
    for name in ("smollm2", "gemma3"):
        engine = Engine(hub.fetch(name, quiet=True), n_ctx=512, threads=2)
        tok = engine.tokenizer
        t0 = time.perf_counter()
        grammar.grammar_tokenizer(tok, engine.n_vocab)
        build = time.perf_counter() - t0
        c = grammar.Constraint(compiled, tok, engine.n_vocab)
        times = []
        original = c.mask_

        def timed(logits, _orig=original):
            t = time.perf_counter()
            out = _orig(logits)
            times.append(time.perf_counter() - t)
            return out

        c.mask_ = timed
        sampler = Sampler(SamplerParams(temp=0), engine.n_vocab, c)
        ids = tok.encode("A JSON record for Ann, aged 31, who likes tea:", add_special=True)
        t0 = time.perf_counter()
        out = list(generate(engine, ids, args.tokens, sampler))
        total = time.perf_counter() - t0
        times.sort()
        print(f"{name}: vocab {engine.n_vocab}, tokenizer for llguidance built in {build:.2f} s; {len(times)} masks: "
              f"median {1e6 * times[len(times) // 2]:.0f} us, p90 {1e6 * times[int(len(times) * 0.9)]:.0f} us; "
              f"generation {total:.2f} s for {len(out)} tokens; output {tok.decode(out)!r}")


if __name__ == "__main__":
    main()
