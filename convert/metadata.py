"""`general.*` metadata (name, size label, licence, sampling defaults...) and the default output name.

gguf's `Metadata` reads the model card, config and generation_config the way the reference does;
the one rule the installed copy lacks (repetition_penalty as the repeat penalty) is added here.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf

OUTTYPES: dict[str, gguf.LlamaFileType] = {
    "f32": gguf.LlamaFileType.ALL_F32,
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "bf16": gguf.LlamaFileType.MOSTLY_BF16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    "auto": gguf.LlamaFileType.GUESSED,
}

# tensor type for the "bulk" weights of each file type
BULK_QTYPE: dict[gguf.LlamaFileType, gguf.GGMLQuantizationType] = {
    gguf.LlamaFileType.ALL_F32: gguf.GGMLQuantizationType.F32,
    gguf.LlamaFileType.MOSTLY_F16: gguf.GGMLQuantizationType.F16,
    gguf.LlamaFileType.MOSTLY_BF16: gguf.GGMLQuantizationType.BF16,
    gguf.LlamaFileType.MOSTLY_Q8_0: gguf.GGMLQuantizationType.Q8_0,
}


def load_metadata(model_dir: Path, model_name: str | None, total_params: int) -> gguf.Metadata:
    meta = gguf.Metadata.load(None, model_dir, model_name, total_params)
    gen = model_dir / "generation_config.json"
    if gen.is_file() and meta.sampling_penalty_repeat is None:
        try:
            meta.sampling_penalty_repeat = json.loads(gen.read_text(encoding="utf-8")).get("repetition_penalty")
        except ValueError:
            pass
    if meta.name is None:
        meta.name = model_dir.name
    return meta


def output_path(outfile: Path | None, model_dir: Path, meta: gguf.Metadata, ftype: gguf.LlamaFileType,
                total_params: int, vocab_only: bool) -> Path:
    """The reference's naming: a folder gets `Name-Size-F16.gguf` inside, a file name fills `{ftype}`."""
    out_type = ftype.name.partition("_")[2]
    target = outfile if outfile is not None else model_dir
    if target.is_dir():
        if vocab_only:
            stem = gguf.naming_convention(meta.name, meta.basename, meta.finetune, meta.version,
                                          size_label=None, output_type=None, model_type="vocab")
        else:
            stem = gguf.naming_convention(meta.name, meta.basename, meta.finetune, meta.version, meta.size_label,
                                          out_type, model_type="LoRA" if total_params < 0 else None)
        return target / f"{stem}.gguf"
    return target.parent / gguf.fill_templated_filename(target.name, out_type)
