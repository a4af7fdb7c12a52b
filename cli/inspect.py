"""`llamatorch inspect MODEL`: what a GGUF file holds, explained (gguf-dump's facts, read the lean way).

Reads metadata and the tensor table only (core/inspect_model.py; no torch), so it answers at once.
Text goes to stdout through rich; `--json` prints the same data as one JSON document instead.
"""

from __future__ import annotations

import io
import json
import sys
from typing import Optional

import typer

NAME = "inspect"
TEMPLATE_LINE = 160  # longer template lines are cut in the text view (JSON keeps them whole)


def command(
    model_arg: Optional[str] = typer.Argument(None, metavar="MODEL", help="GGUF file or model name"),
    model: Optional[str] = typer.Option(None, "-m", "--model", help="GGUF file or model name (default: smollm2)"),
    ctx_size: int = typer.Option(0, "-c", "--ctx-size", help="context for the KV-cache figure (0 = training context)"),
    dtype: str = typer.Option("auto", "--dtype", help="compute dtype the KV cache is held in: auto (bf16), f32, bf16, f16"),
    as_json: bool = typer.Option(False, "--json", help="print JSON for scripts instead of text"),
    tensors: bool = typer.Option(False, "--tensors", help="also list every tensor: name, type, shape, bytes"),
    metadata: bool = typer.Option(False, "--metadata", help="also list every metadata key (arrays summarised; --json always has them)"),
) -> None:
    """Explain a GGUF: architecture, hyper-parameters, tokenizer, chat template, tensor types, BPW, KV cache."""
    from llamatorch.core import hub
    from llamatorch.core.errors import LlamatorchError
    from llamatorch.core.inspect_model import inspect

    if model_arg is not None and model is not None:
        raise LlamatorchError("give the model either as MODEL or with -m, not both")
    report = inspect(hub.resolve_model(model_arg or model or "smollm2"), ctx_size, dtype, list_tensors=tensors)
    if as_json:
        sys.stdout.write(json.dumps(report.to_dict(), indent=2) + "\n")  # every metadata key is in it
        return
    render(report.to_dict(), metadata)


# ---- formatting helpers -----------------------------------------------------------------------
def size(n: int) -> str:
    for unit, div in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n} B"


def count(n: int) -> str:
    """llama.cpp's "model params" style: 134.52 M."""
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f} {unit}"
    return str(n)


def num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def tok(t: dict | None) -> str:
    return "-" if t is None else f"{t['id']} {t['text']!r}" if t["text"] is not None else f"{t['id']} (out of range)"


def kv_formula(g: dict, first: bool) -> str:
    return (f"{g['layers']} {g['label']} × 2{' (K, V)' if first else ''} × {g['n_head_kv']} KV head{'s' if g['n_head_kv'] != 1 else ''} × {g['head_dim']} dims "
            f"× {g['cells']} cells × {g['itemsize']} bytes")


# ---- sections ---------------------------------------------------------------------------------
def render(r: dict, show_metadata: bool) -> None:
    from rich.console import Console

    tty = sys.stdout.isatty()
    # piped output: a fixed width, and rich's column padding stripped from line ends
    console = Console(highlight=False, markup=False, width=None if tty else 120, file=None if tty else io.StringIO())
    sections = [_overview, _hparams, _tokenizer, _chat_template, _tensors, _kv_cache]
    sections += [_tensor_list] if r["tensor_list"] is not None else []
    sections += [_metadata] if show_metadata else []
    for section in sections:
        section(console, r)
    if not tty:
        sys.stdout.write("".join(line.rstrip() + "\n" for line in console.file.getvalue().splitlines()))


def _grid(console, title: str, rows: list[tuple[str, str]]) -> None:
    from rich.table import Table
    from rich.text import Text

    console.print(Text(title, style="bold"))
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="cyan", no_wrap=True)
    grid.add_column(overflow="fold")
    for k, v in rows:
        grid.add_row("  " + k, v)
    console.print(grid)
    console.print()


def _overview(console, r: dict) -> None:
    f, g, t, rt = r["file"], r["general"], r["tensors"], r["runtime"]
    from pathlib import Path

    name = ", ".join(str(x) for x in (g["organization"], g["size_label"], g["license"]) if x)
    ft = g["file_type"]
    if rt["supported"]:
        runs = ("a decoder-only transformer llamatorch runs (cli, server, perplexity, bench)" if rt["kind"] == "decoder"
                else "an encoder llamatorch runs for embeddings (llamatorch embedding)")
    else:
        runs = rt["note"]
    _grid(console, Path(f["path"]).name, [
        ("name", f"{g['name'] or '-'}" + (f" ({name})" if name else "")),
        ("file", f"{size(f['size'])}, GGUF v{f['gguf_version']}, {f['n_metadata']} metadata keys, {f['n_tensors']} tensors"),
        ("architecture", f"{r['architecture'] or '-'}: {runs}"),
        ("file type", ft["name"] + (" (no general.file_type: the most common tensor type, as llama.cpp guesses)"
                                    if ft["guessed"] else f" (general.file_type {ft['id']})")),
        ("parameters", f"{count(t['n_params'])} in {size(t['bytes'])} of tensor data: {t['bpw']:.2f} bits per weight "
                       "(BPW, as llama.cpp prints it)"),
    ])


def _hparams(console, r: dict) -> None:
    h, kind = r["hparams"], r["runtime"]["kind"]
    if kind is None:
        rows = [(k, _short(v)) for k, v in h.items()] or [("-", "no architecture keys")]
        return _grid(console, f"Hyper-parameters (raw {r['architecture']}.* keys: not interpreted)", rows)
    rows = [("layers", str(h["n_layer"])), ("width", f"{h['n_embd']} (n_embd)")]
    if kind == "encoder":
        rows += [("feed-forward", f"{h['n_ff']}, GELU"),
                 ("attention", f"{h['n_head']} heads of size {h['head_dim']}, "
                               f"{'causal' if h['causal'] else 'bidirectional (each token sees the whole text)'}"),
                 ("context", f"{h['n_ctx_train']} tokens (training)"), ("norm", f"LayerNorm, eps {h['norm_eps']:g}"),
                 ("pooling", f"{h['pooling']} (pooling_type {h['pooling_type']}): how token vectors become one "
                             "embedding per text")]
        return _grid(console, "Hyper-parameters", rows)
    gated = "gated SiLU (SwiGLU)" if h["activation"] == "silu" else "gated GELU (tanh approximation)"
    gqa = f" (GQA: {h['n_gqa']} query heads share each KV head)" if h["n_gqa"] > 1 else " (multi-head)"
    rope = ("NeoX (rotates halves)" if h["rope_neox"] else "normal (rotates adjacent pairs)")
    rows += [("feed-forward", f"{h['n_ff']}, {gated}"),
             ("attention", f"{h['n_head']} query heads, {h['n_head_kv']} KV head{'s' if h['n_head_kv'] != 1 else ''}{gqa}, head size {h['head_dim']}"),
             ("context", f"{h['n_ctx_train']} tokens (training)"),
             ("RoPE", f"{rope} over {h['n_rot']} of {h['head_dim']} dims, base {num(h['rope_base'])}"),
             ("norm", f"RMSNorm, eps {h['rms_eps']:g}"),
             ("vocabulary", f"{h['n_vocab']} embedding rows" + (", output tied to the token embeddings"
                                                                 if h["tied_embeddings"] else ", separate output matrix"))]
    if h["n_swa"]:
        rows.append(("sliding window", f"{h['n_swa']} tokens on {h['n_swa_layers']} of {h['n_layer']} layers (the "
                                       f"others attend to the whole context); local RoPE base {num(h['rope_base_swa'])}"))
    if h.get("n_expert"):
        rows.append(("experts", f"{h['n_expert']} ({h.get('n_expert_used', '?')} used per token)"))
    extras = _extras(h)
    if extras:
        rows.append(("also", "; ".join(extras)))
    _grid(console, "Hyper-parameters", rows)


def _extras(h: dict) -> list[str]:
    out = [label for key, label in (("qkv_bias", "Q/K/V biases"), ("qk_norm", "QK-norm (RMSNorm of Q and K per head)"),
                                    ("post_norms", "post-norms on attention and FFN outputs"),
                                    ("fused_qkv", "fused QKV matrix")) if h[key]]
    if h["embd_scale"] != 1.0:
        out.append(f"embeddings × {h['embd_scale']:.4g}")
    if h["attn_scale"]:
        out.append(f"query scale {h['attn_scale']:g}")
    if h["final_softcap"]:
        out.append(f"logit soft-cap {h['final_softcap']:g}")
    if h["rope_scale"] != 1.0:
        out.append(f"linear RoPE scaling (positions × {h['rope_scale']:g})")
    if h["rope_freq_factors"] or h["rope_factors_long"]:
        out.append("RoPE frequency factors (Llama 3.1 / LongRoPE)")
    if h["residual_scale"] != 1.0 or h["logit_scale"] != 1.0:
        out.append(f"residual × {h['residual_scale']:g}, logits ÷ {h['logit_scale']:g}")
    return out


def _tokenizer(console, r: dict) -> None:
    t = r["tokenizer"]
    rows = [("kind", f"{t['kind']} (tokenizer.ggml.model {t['model']}): {t['explained']}" if t["model"] is not None
             else "none: the file has no tokenizer.ggml.model")]
    if t["pre"]:
        rows.append(("pre-tokenizer", f"{t['pre']} (tokenizer.ggml.pre: how text is split before the vocabulary applies)"))
    extra = f", {t['n_merges']} merges" if t["n_merges"] else (", with scores" if t["has_scores"] else "")
    rows.append(("vocabulary", f"{t['n_vocab']} tokens{extra}"))
    if not t["usable"]:
        rows.append(("note", f"llamatorch's tokenizer cannot use it: {t['problem']}"))
    sp = t["special"]
    if "bos" in sp:
        added = {True: ", added to every prompt", False: ", not added (add_bos false)", None: ""}[t["add_bos"]]
        rows.append(("BOS", tok(sp["bos"]) + added))
    rows += [(name.upper(), tok(sp[name])) for name in ("eos", "eot") if name in sp]
    others = [f"{k} {tok(v)}" for k, v in sp.items() if k not in ("bos", "eos", "eot")]
    if others:
        rows.append(("other special", ", ".join(others)))
    if t["eog"]:
        rows.append(("stops on", ", ".join(tok(e) for e in t["eog"]) + " (end-of-generation tokens)"))
    _grid(console, "Tokenizer", rows)


def _chat_template(console, r: dict) -> None:
    from rich.text import Text

    c = r["chat_template"]
    if not c["present"]:
        fb = (f"; `llamatorch cli` uses the built-in '{c['fallback']}' ({c['fallback_why']})" if c["fallback"] else "")
        return _grid(console, "Chat template", [("none", f"the file has no tokenizer.chat_template{fb}")])
    like = f", like llama.cpp's built-in '{c['resembles']}'" if c["resembles"] else ""
    console.print(Text(f"Chat template ({c['n_lines']} lines, {c['n_chars']} characters{like}; "
                       f"first {len(c['head'])})", style="bold"))
    for line in c["head"]:
        cut = line if len(line) <= TEMPLATE_LINE else line[:TEMPLATE_LINE] + "…"
        console.print(Text("  │ " + cut), soft_wrap=True)
    if c["n_lines"] > len(c["head"]):
        console.print(f"  │ … {c['n_lines'] - len(c['head'])} more lines (--json has them all)")
    if c["named"]:
        console.print(f"  other templates: {', '.join(c['named'])}")
    console.print()


def _tensors(console, r: dict) -> None:
    from rich.table import Table
    from rich.text import Text

    t = r["tensors"]
    console.print(Text(f"Tensors ({t['count']}) by type", style="bold"))
    table = Table(box=None, padding=(0, 2))
    for col, just in (("type", "left"), ("tensors", "right"), ("parameters", "right"), ("bytes", "right"),
                      ("share", "right"), ("bits/weight", "right")):
        table.add_column(col, justify=just)
    for e in t["by_type"]:
        table.add_row(e["type"], str(e["count"]), count(e["n_elements"]), size(e["bytes"]), f"{e['share']:.1%}",
                      f"{e['bpw']:.2f}")
    table.add_row("total", str(t["count"]), count(t["n_params"]), size(t["bytes"]), "100%", f"{t['bpw']:.2f}",
                  style="bold")
    console.print(table)
    console.print()


def _kv_cache(console, r: dict) -> None:
    from rich.table import Table

    kv = r["kv_cache"]
    if kv is None:
        return
    if not kv["applies"]:
        return _grid(console, "KV cache", [("none", kv["why"])])
    ours, cpp = kv["llamatorch"], kv["llama_cpp"]
    rows = [(f"llamatorch ({kv['dtype']}, --dtype {kv['dtype_flag']})",
             f"{size(ours['bytes'])} = " + kv_formula(ours["groups"][0], True)),
            ("llama.cpp (f16 default)", f"{size(cpp['bytes'])} = "
             + " + ".join(kv_formula(g, i == 0) for i, g in enumerate(cpp["groups"])))]
    notes = ["ours has one spare cell for padding writes; on the CPU its pages are committed only as cells fill"]
    if len(cpp["groups"]) > 1:
        notes.append("llama.cpp keeps sliding-window layers at window + one 512-token batch; llamatorch keeps every "
                     "layer at the full context")
    rows += [("note", n) for n in notes]
    _grid(console, f"KV cache at -c {kv['n_ctx']} (one sequence)", rows)
    table = Table(box=None, padding=(0, 2), show_edge=False)
    for col in ("-c", "llamatorch", "llama.cpp"):
        table.add_column(col, justify="right")
    for s in kv["at_sizes"]:
        table.add_row(str(s["n_ctx"]), size(s["llamatorch"]), size(s["llama_cpp"]))
    console.print(table)
    console.print()


def _tensor_list(console, r: dict) -> None:
    from rich.table import Table
    from rich.text import Text

    console.print(Text("Every tensor (ne in ggml order: row length first, as gguf-dump prints)", style="bold"))
    table = Table(box=None, padding=(0, 2))
    for col, just in (("#", "right"), ("name", "left"), ("type", "left"), ("ne", "left"), ("bytes", "right")):
        table.add_column(col, justify=just)
    for i, t in enumerate(r["tensor_list"]):
        table.add_row(str(i), t["name"], t["type"], " × ".join(map(str, t["ne"])), size(t["bytes"]))
    console.print(table)
    console.print()


def _metadata(console, r: dict) -> None:
    _grid(console, f"Metadata ({len(r['metadata'])} keys)", [(k, _short(v)) for k, v in r["metadata"].items()])


def _short(v, limit: int = 100) -> str:
    if isinstance(v, dict) and "length" in v:  # an array, summarised by inspect_model.jsonable
        head = ", ".join(repr(x) for x in v["head"])
        return f"[{head}{', …' if v['length'] > len(v['head']) else ''}] ({v['length']} items)"
    s = repr(v) if isinstance(v, str) else str(v)
    return s if len(s) <= limit else s[:limit] + f"… ({len(s)} characters)"
