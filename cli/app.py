"""The `llamatorch` Typer app: one subcommand per llama.cpp tool.

Each subcommand lives in its own module exposing ``NAME`` and ``command``; modules import only
typer at top level (torch is imported lazily inside the command) so `--help` stays instant.
"""

from __future__ import annotations

import importlib
import signal
import sys

import typer

from llamatorch.core.errors import LlamatorchError

# module (under llamatorch.cli) for each subcommand, in the order `--help` lists them
COMMAND_MODULES = [
    "generate",  # cli
    "bench",
    "tokenize",
    "download",
    "inspect",
    "convert",
    "quantize",
    "quant_sweep",
    "perplexity",
    "batched_bench",
    "embedding",
    "server",
]

app = typer.Typer(
    name="llamatorch",
    help="llama.cpp's tools rebuilt on PyTorch.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

_CONTEXT = {"help_option_names": ["-h", "--help"]}


@app.callback(context_settings=_CONTEXT)
def _root() -> None:
    """llama.cpp's tools rebuilt on PyTorch: run `llamatorch COMMAND --help` for each tool."""

for _mod_name in COMMAND_MODULES:
    _mod = importlib.import_module(f"llamatorch.cli.{_mod_name}")
    app.command(name=_mod.NAME, context_settings=_CONTEXT)(_mod.command)


def _terminate(signum, frame) -> None:
    # SIGTERM unwinds like an interrupt, so half-written outputs are removed (core.atomic_file)
    print("terminated", file=sys.stderr)
    sys.exit(128 + signum)


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    try:
        app()
    except LlamatorchError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        sys.stderr.close()
        sys.exit(1)


if __name__ == "__main__":
    main()
