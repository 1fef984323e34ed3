"""The small error hierarchy of onnxmp.

Why: every problem with the user's input is raised where it is found, with a one-line
message naming the thing (file, key, node, tensor), and handled once, in the CLI.
"""

from __future__ import annotations


class OnnxmpError(Exception):
    """A problem with the user's input or environment. The message is one line."""


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
