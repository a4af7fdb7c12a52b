"""llama-quantize's file types: names, numbers (llama_ftype), one-line descriptions, default
tensor type; and ggml type names for --output-tensor-type / --token-embedding-type.

Kept as data (no numpy) so the CLI can list them in --help without importing anything heavy.
"""

from __future__ import annotations

from dataclasses import dataclass

from llamatorch.core.errors import LlamatorchError


@dataclass(frozen=True)
class FileType:
    name: str
    ftype: int  # llama_ftype, written to general.file_type
    desc: str
    default: str  # ggml type most tensors get (llama_ftype_get_default_type)


# llama-quantize's QUANT_OPTIONS for the types we build, in its order
FILE_TYPES = [
    FileType("Q4_0", 2, " 4.34G, +0.4685 ppl @ Llama-3-8B", "Q4_0"),
    FileType("Q4_1", 3, " 4.78G, +0.4511 ppl @ Llama-3-8B", "Q4_1"),
    FileType("Q5_0", 8, " 5.21G, +0.1316 ppl @ Llama-3-8B", "Q5_0"),
    FileType("Q5_1", 9, " 5.65G, +0.1062 ppl @ Llama-3-8B", "Q5_1"),
    FileType("Q2_K", 10, " 2.96G, +3.5199 ppl @ Llama-3-8B", "Q2_K"),
    FileType("Q3_K", 12, "alias for Q3_K_M", "Q3_K"),
    FileType("Q3_K_S", 11, " 3.41G, +1.6321 ppl @ Llama-3-8B", "Q3_K"),
    FileType("Q3_K_M", 12, " 3.74G, +0.6569 ppl @ Llama-3-8B", "Q3_K"),
    FileType("Q3_K_L", 13, " 4.03G, +0.5562 ppl @ Llama-3-8B", "Q3_K"),
    FileType("Q4_K", 15, "alias for Q4_K_M", "Q4_K"),
    FileType("Q4_K_S", 14, " 4.37G, +0.2689 ppl @ Llama-3-8B", "Q4_K"),
    FileType("Q4_K_M", 15, " 4.58G, +0.1754 ppl @ Llama-3-8B", "Q4_K"),
    FileType("Q5_K", 17, "alias for Q5_K_M", "Q5_K"),
    FileType("Q5_K_S", 16, " 5.21G, +0.1049 ppl @ Llama-3-8B", "Q5_K"),
    FileType("Q5_K_M", 17, " 5.33G, +0.0569 ppl @ Llama-3-8B", "Q5_K"),
    FileType("Q6_K", 18, " 6.14G, +0.0217 ppl @ Llama-3-8B", "Q6_K"),
    FileType("Q8_0", 7, " 7.96G, +0.0026 ppl @ Llama-3-8B", "Q8_0"),
    FileType("F16", 1, "14.00G, +0.0020 ppl @ Mistral-7B", "F16"),
    FileType("BF16", 32, "14.00G, -0.0050 ppl @ Mistral-7B", "BF16"),
    FileType("F32", 0, "26.00G              @ 7B", "F32"),
]

# llama-quantize types we do not build: why, in llama.cpp's words where it has them
_NEEDS_IMATRIX = "this quantization requires an importance matrix (imatrix), which llamatorch quantize does not support yet"
REFUSED = {
    "Q2_K_S": (21, _NEEDS_IMATRIX),
    "IQ2_XXS": (19, _NEEDS_IMATRIX),
    "IQ2_XS": (20, _NEEDS_IMATRIX),
    "IQ2_S": (28, _NEEDS_IMATRIX),
    "IQ2_M": (29, _NEEDS_IMATRIX),
    "IQ1_S": (24, _NEEDS_IMATRIX),
    "IQ1_M": (31, _NEEDS_IMATRIX),
    "IQ3_XXS": (23, _NEEDS_IMATRIX),
    "IQ3_XS": (22, "IQ3 types are not supported by llamatorch quantize yet"),
    "IQ3_S": (26, "IQ3 types are not supported by llamatorch quantize yet"),
    "IQ3_M": (27, "IQ3 types are not supported by llamatorch quantize yet"),
    "IQ4_NL": (25, "IQ4 types are not supported by llamatorch quantize yet"),
    "IQ4_XS": (30, "IQ4 types are not supported by llamatorch quantize yet"),
    "TQ1_0": (36, "ternary types are not supported by llamatorch quantize yet"),
    "TQ2_0": (37, "ternary types are not supported by llamatorch quantize yet"),
    "MXFP4_MOE": (38, "MXFP4 is not supported by llamatorch quantize yet"),
    "Q1_0": (40, "Q1_0 is not supported by llamatorch quantize yet"),
    "Q2_0": (41, "Q2_0 is not supported by llamatorch quantize yet"),
    "COPY": (None, "COPY is not supported by llamatorch quantize yet"),
}

# ggml types a tensor may be given explicitly (--output-tensor-type, --token-embedding-type)
TENSOR_TYPES = ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]


def parse_file_type(text: str) -> FileType:
    """By name (case-insensitive) or llama_ftype number, as llama-quantize's try_parse_ftype."""
    up = text.strip().upper()
    for ft in FILE_TYPES:
        if ft.name == up:
            return ft
    number = None
    try:
        number = int(up)
    except ValueError:
        pass
    if number is not None:
        for ft in FILE_TYPES:
            if ft.ftype == number and not ft.desc.startswith("alias"):
                return ft
    for name, (num, why) in REFUSED.items():
        if up == name or (number is not None and number == num):
            raise LlamatorchError(f"quantization type {name}: {why}")
    raise LlamatorchError(f"invalid ftype '{text}' (see `llamatorch quantize --help` for the list)")


def parse_tensor_type(text: str, option: str) -> str:
    up = text.strip().upper()
    if up in TENSOR_TYPES:
        return up
    raise LlamatorchError(f"{option}: invalid ggml_type '{text}' (one of: {', '.join(TENSOR_TYPES)})")


def types_help() -> str:
    lines = [f"{ft.ftype:2d}  or  {ft.name:<7} : {ft.desc}" for ft in FILE_TYPES]
    return "\n".join(lines)
