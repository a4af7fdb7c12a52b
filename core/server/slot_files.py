"""A slot's prompt cache on disk (llama-server's POST /slots/{id}?action=save|restore), in the
format of core/prompt_state.py (what `cli --prompt-cache` writes too).

Names are plain file names inside --slot-save-path: anything with a path separator, `..` or a
leading dot is refused.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import LlamatorchError


_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,254}$")


def checked_path(folder: Path, name: str) -> Path:
    """`folder/name` for a name that stays inside `folder`, else a LlamatorchError ("Invalid filename")."""
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise LlamatorchError(f"Invalid filename: {name!r} (letters, digits, '_', '-', '.'; no paths)")
    return folder / name
