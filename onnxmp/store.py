"""Resumable results: JSON lines keyed by a fingerprint of everything that decides them.

Why: phase 1 is the long part of a run. Each (group, candidate) result is appended as soon
as it is measured, so an interrupted run (Ctrl-C, kill, power loss) resumes where it stopped;
the key hashes model, profile, calibration data and settings, so a changed input can never
reuse stale numbers (AIMET leaves that to a `clean_start` flag the user must remember).
A torn last line (killed mid-write), and any line damaged otherwise, is ignored on reading.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from onnxmp.errors import StoreError

FORMAT_VERSION = 1


def run_key(**parts: str) -> str:
    """sha256 over the named fingerprints (sorted by name), e.g. model=..., profile=...

    >>> run_key(a="1", b="2") == run_key(b="2", a="1")
    True
    """
    payload = json.dumps({"format": FORMAT_VERSION, **parts}, sort_keys=True)  # unambiguous
    return hashlib.sha256(payload.encode()).hexdigest()


def _parse_line(line: bytes) -> dict | None:
    """The JSON object on `line`, or None for anything else (torn, binary, too deep)."""
    try:
        entry = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):  # JSONDecodeError is a ValueError
        return None
    return entry if isinstance(entry, dict) else None


@dataclass(frozen=True)
class ResultStore:
    """Append-only JSON-lines file; entries carry the run key and a record kind."""

    path: Path
    key: str

    def entries(self, kind: str) -> Iterator[dict]:
        """Entries of `kind` written under this key.

        Lines that are torn, not UTF-8, not JSON objects, or of other keys or kinds are
        skipped; the reader of a kind decides which entries are whole (`Phase1Result.from_entry`).
        """
        if not self.path.exists():
            return
        try:
            lines = self.path.read_bytes().split(b"\n")
        except OSError as e:
            raise StoreError(f"{self.path}: cannot read results store: {e.strerror}") from e
        for line in lines:
            entry = _parse_line(line)
            if entry is not None and entry.get("key") == self.key and entry.get("kind") == kind:
                yield entry

    def append(self, kind: str, record: Mapping) -> None:
        """Append one entry and fsync, so a finished measurement survives a kill."""
        line = json.dumps({"key": self.key, "kind": kind, **record}, sort_keys=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":  # a torn line from a killed run: end it first
                    f.write(b"\n")
            f.write(line.encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())
