"""The small error hierarchy of onnxmp.

Why: every problem with the user's input is raised where it is found, with a one-line
message naming the thing (file, key, node, tensor), and handled once, in the CLI.
"""

from __future__ import annotations

import unicodedata


def printable(text: str) -> str:
    r"""`text` with every control or format character (newline, ESC, bidi override) escaped.

    Why: messages echo names taken from the user's files (tensor, node, key names); a name
    holding a newline would break the one-line contract, and an escape sequence or a bidi
    override would let a file rewrite the user's terminal.

    >>> printable("conv\x1b[2J\nrelu")
    'conv\\x1b[2J\\nrelu'
    """
    if text.isprintable():
        return text
    return "".join(
        repr(ch)[1:-1] if unicodedata.category(ch) in _UNPRINTABLE else ch for ch in text
    )


_UNPRINTABLE = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})  # repr escapes all of these


class OnnxmpError(Exception):
    """A problem with the user's input or environment. The message is one line, printable."""

    def __init__(self, message: str = "") -> None:
        super().__init__(printable(str(message)))


class ModelError(OnnxmpError):
    """Unreadable or unsupported model, unknown op."""


class ProfileError(OnnxmpError):
    """A hardware profile that does not parse or validate; names file and key path."""


class CalibrationError(OnnxmpError):
    """NaN/inf, or shape, dtype or name mismatch between calibration data and model inputs."""


class BudgetError(OnnxmpError):
    """A target outside what the Pareto curve can reach; names the achievable range."""


class PassError(OnnxmpError):
    """A graph pass failed; the message names the pass."""


class EncodingsError(OnnxmpError):
    """An encodings file that does not parse or does not fit the model."""


class StoreError(OnnxmpError):
    """A results store that cannot be read or written."""


class OutputError(OnnxmpError):
    """An output folder another run is writing to."""


class RunError(OnnxmpError):
    """A run that could not finish (a worker died, an executor lost results); a rerun resumes."""


def first_line(exc: BaseException) -> str:
    """The first line of `exc`'s message ('' when it has none): messages stay one line.

    >>> first_line(ValueError("bad shape\\nTraceback of the C++ side"))
    'bad shape'
    >>> first_line(KeyError())
    ''
    """
    text = str(exc)
    return text.splitlines()[0] if text else ""


class InternalError(RuntimeError):
    """onnxmp's own bug, found where it shows (ONNX Runtime refusing a model onnxmp built).

    Not an `OnnxmpError`: the CLI reports it as an internal error (exit 3), never as the
    user's input error (exit 2).
    """
