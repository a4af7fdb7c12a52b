"""`quant-sweep`: quantize one float model to several types and measure each against it.

plan -> base row (the float model: its log-probabilities become the KL base) -> one row per type
(quantize or reuse the file, one perplexity pass that also gives KL-divergence, the speed tests).
Rows are written to sweep.csv / sweep.jsonl after each one, atomically, so an interrupt keeps the
finished rows and never leaves a half file. The measurements themselves live in sweep_eval.py.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from llamatorch.core.atomic_file import AtomicFile
from llamatorch.core.errors import LlamatorchError

from .ftypes import FILE_TYPES, REFUSED, FileType

DEFAULT_TYPES = "Q8_0,Q6_K,Q5_K_M,Q4_K_M,Q4_0,Q3_K_M,Q2_K"
FLOAT_NAMES = ("F32", "F16", "BF16")


@dataclass
class SweepConfig:
    model: Path  # the float base GGUF
    text: Path
    types: list[FileType]
    out_dir: Path
    n_ctx: int = 512
    n_batch: int = 2048
    chunks: int = -1
    threads: int | None = None
    dtype: str = "auto"
    device: str = "cpu"
    n_prompt: int = 512
    n_gen: int = 128
    reps: int = 3
    bench: bool = True


@dataclass
class Row:
    type: str
    file: str
    size_bytes: int  # the whole file
    bpw: float  # bits per weight of the tensor data (llama-quantize's BPW)
    ppl: float
    ppl_err: float
    kld: float  # mean KL divergence from the base, nats
    kld_err: float
    same_top: float  # % of scored positions where the top token matches the base's
    pp_ts: float | None  # prompt processing, tokens/s (None: --no-bench)
    tg_ts: float | None  # generation, tokens/s
    dtype: str  # compute dtype of the perplexity pass
    n_ctx: int
    n_chunk: int
    source: str  # base, quantized, reused


COLUMNS = [f.name for f in fields(Row)]


class Hooks:
    """What a front end is told: log lines, the stage now running, steps done (of `total_steps`)."""

    def log(self, msg: str) -> None:
        pass

    def stage(self, text: str) -> None:
        pass

    def step(self, n: int = 1) -> None:
        pass


# ---- plan ----------------------------------------------------------------------------------------


def canonical(ft: FileType) -> FileType:
    """Q4_K -> Q4_K_M: an alias names the same file as its target."""
    if ft.desc.startswith("alias"):
        return next(f for f in FILE_TYPES if f.ftype == ft.ftype and not f.desc.startswith("alias"))
    return ft


def parse_types(text: str) -> list[FileType]:
    """A comma list of llama-quantize type names, or `all` (every quantized type it builds)."""
    if text.strip().lower() == "all":
        return [f for f in FILE_TYPES if f.name not in FLOAT_NAMES and not f.desc.startswith("alias")]
    by_name = {f.name: f for f in FILE_TYPES}
    out: list[FileType] = []
    for part in (p.strip().upper() for p in text.split(",")):
        if not part:
            continue
        if part in REFUSED:
            raise LlamatorchError(f"--types: {part}: {REFUSED[part][1]}")
        if part not in by_name:
            known = ", ".join(f.name for f in FILE_TYPES if not f.desc.startswith("alias"))
            raise LlamatorchError(f"--types: unknown type '{part}' (known: {known}, or all)")
        ft = canonical(by_name[part])
        if ft not in out:
            out.append(ft)
    if not out:
        raise LlamatorchError("--types is empty (give a comma list such as Q8_0,Q4_K_M, or all)")
    return out


def base_type(gguf) -> str:
    """F16, BF16 or F32 from the weights; refuses a file with quantized tensors."""
    names = {t.qtype.name for t in gguf.tensors.values()}
    quantized = sorted(names - set(FLOAT_NAMES))
    if quantized:
        raise LlamatorchError(f"{gguf.path.name} is already quantized ({', '.join(quantized)} tensors): "
                              "give an F16/BF16/F32 file as the base")
    return next((n for n in ("BF16", "F16") if n in names), "F32")


def stem(model: Path) -> str:
    """`smollm2-f16.gguf` -> `smollm2`: the quantized files are named `STEM-TYPE.gguf`."""
    return re.sub(r"[-_.](f16|bf16|f32)$", "", model.stem, flags=re.IGNORECASE) or model.stem


def default_out_dir(model: Path) -> Path:
    return model.parent / f"{stem(model)}-sweep"


def quant_path(cfg: SweepConfig, ft: FileType) -> Path:
    return cfg.out_dir / f"{stem(cfg.model)}-{ft.name}.gguf"


def total_steps(cfg: SweepConfig, n_chunk: int) -> int:
    """Progress units: per row its chunks, one for the speed tests, one for quantizing."""
    bench = 1 if cfg.bench else 0
    return (n_chunk + bench) + len(cfg.types) * (1 + n_chunk + bench)


# ---- quantized files -----------------------------------------------------------------------------


def reuse_problem(path: Path, ft: FileType, base) -> str | None:
    """Why an existing file can't stand for `ft` quantized from `base` (None: it can)."""
    from llamatorch.core.gguf_file import GGUFFile

    try:
        with GGUFFile(path) as f:
            got = f.get("general.file_type")
            if got is None or int(got) != ft.ftype:
                return f"its general.file_type is {got}, not {ft.ftype} ({ft.name})"
            mine = {n: t.ne for n, t in f.tensors.items()}
    except LlamatorchError as e:
        return f"it does not read as GGUF ({e})"
    if mine != {n: t.ne for n, t in base.tensors.items()}:
        return "its tensors are not the base model's"
    return None


def ensure_quantized(cfg: SweepConfig, ft: FileType, base, hooks: Hooks) -> tuple[Path, bool]:
    """The file for `ft`: reused when one of the right type is there, else made (atomically:
    quantize_model writes a temporary and renames it). Returns (path, reused)."""
    from .run import Options, quantize_model

    path = quant_path(cfg, ft)
    if path.exists():
        why = reuse_problem(path, ft, base)
        if why is None:
            hooks.log(f"{ft.name}: reusing {path} (file type {ft.name})")
            return path, True
        hooks.log(f"{ft.name}: not reusing {path}: {why}; quantizing again")
    hooks.stage(f"{ft.name}: quantizing")
    s = quantize_model(Options(input=cfg.model, output=path, file_type=ft, nthreads=cfg.threads or 0,
                               progress=False))
    hooks.log(f"{ft.name}: wrote {path} ({s.size_out / 2**20:.2f} MiB, {s.seconds:.1f} s)")
    return path, False


# ---- results -------------------------------------------------------------------------------------


def sort_rows(rows: list[Row]) -> list[Row]:
    return sorted(rows, key=lambda r: -r.size_bytes)


def _plain(v):
    """JSON has no NaN: an undefined figure is null."""
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _atomic_text(path: Path, text: str) -> None:
    with AtomicFile(path) as f:
        f.write(text.encode("utf-8"))


def write_rows(rows: list[Row], out_dir: Path) -> None:
    """sweep.csv and sweep.jsonl, sorted by size, each replaced whole."""
    rows = sort_rows(rows)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else v) for k, v in asdict(r).items()})
    _atomic_text(out_dir / "sweep.csv", buf.getvalue())
    lines = [json.dumps({k: _plain(v) for k, v in asdict(r).items()}) for r in rows]
    _atomic_text(out_dir / "sweep.jsonl", "".join(line + "\n" for line in lines))


def read_jsonl(path: Path) -> list[Row]:
    def num(v):
        return float("nan") if v is None else v

    rows = []
    for line in Path(path).read_text().splitlines():
        d = json.loads(line)
        for k in ("ppl", "ppl_err", "kld", "kld_err", "same_top"):
            d[k] = num(d[k])
        rows.append(Row(**d))
    return rows


# ---- the sweep -----------------------------------------------------------------------------------


@dataclass
class Plan:
    base: object  # GGUFFile of the base model
    base_name: str  # F16, BF16 or F32
    text: object  # sweep_eval.TextPlan: the tokens and chunking, as `perplexity` sets them


def plan_sweep(cfg: SweepConfig) -> Plan:
    """Everything checked before any work: the base is a float model, the text long enough."""
    from llamatorch.core.gguf_file import GGUFFile
    from llamatorch.core.hub import resolve_model

    from . import sweep_eval as ev

    cfg.model = resolve_model(str(cfg.model))
    base = GGUFFile(cfg.model)
    name = base_type(base)
    return Plan(base, name, ev.prepare_text(cfg, base))


def run_sweep(cfg: SweepConfig, plan: Plan, hooks: Hooks, rows: list[Row]) -> list[Row]:
    """Measure the base, then each type; each finished row is appended to `rows` and written out
    (so after an interrupt `rows` and the files hold exactly the finished ones)."""
    from llamatorch.core.gguf_file import GGUFFile

    from . import sweep_eval as ev

    text = plan.text
    cfg.out_dir.mkdir(parents=True, exist_ok=True)

    def add(row: Row) -> None:
        rows.append(row)
        write_rows(rows, cfg.out_dir)
        hooks.log(ev.row_line(row))

    kl_path = ev.base_file(cfg, text)
    res, dtype = ev.ensure_base(cfg, text, kl_path, hooks)
    speed = ev.speed(cfg, cfg.model, plan.base_name, hooks)
    add(ev.make_row(plan.base_name, cfg.model, plan.base, res, None, dtype, cfg.n_ctx, text.n_chunk, "base", speed))
    for ft in cfg.types:
        if ft.name == plan.base_name:
            hooks.log(f"{ft.name}: that is the base itself (see its row)")
            hooks.step(1 + text.n_chunk + (1 if cfg.bench else 0))
            continue
        path, reused = ensure_quantized(cfg, ft, plan.base, hooks)
        hooks.step()
        res, stats, dtype = ev.measure(cfg, text, path, kl_path, ft.name, hooks)
        speed = ev.speed(cfg, path, ft.name, hooks)
        with GGUFFile(path) as f:
            add(ev.make_row(ft.name, path, f, res, stats, dtype, cfg.n_ctx, text.n_chunk,
                            "reused" if reused else "quantized", speed))
    return rows
