"""The one exception type the command line turns into a one-line error."""


class LlamatorchError(Exception):
    """A user-facing failure: bad input, missing file, unsupported feature.

    The CLI prints ``error: <message>`` on stderr and exits non-zero; no traceback.
    """


class GGUFError(LlamatorchError):
    """A GGUF file that cannot be read: bad magic/version, truncated, absurd sizes."""
