"""An output folder holds one run's files or none: a lock per run, a staging folder switched in.

Why: a run writes several files (model, encodings, plan, curve, reports). Written one by
one, a kill between two of them left a new model beside the previous run's plan and
encodings, and two runs into one folder interleaved their files. Now a run
1. takes an exclusive lock on the folder (`locked`; a second run is refused in one line),
   and removes what killed runs left (staging folders, temporary files);
2. writes its files into a fresh staging folder inside it (`staged`);
3. switches them in: the previous run's manifest goes first (from then on the folder
   claims no complete run), then the previous run's files, then the new files are renamed
   in (same file system: each rename is atomic) and the new manifest is written last.
A kill at any point leaves some files of one run only (no manifest: incomplete) or the whole
new run with its manifest. The phase-1 store (`phase1.jsonl`) is not a run's file: it
outlives runs by design (resumption) and is never touched here.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Collection, Iterator
from pathlib import Path

from onnxmp import files, model_io
from onnxmp.errors import OutputError

MANIFEST = ".onnxmp-run.json"
STAGING_PREFIX = ".onnxmp-staging-"


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[Path]:
    """Hold an exclusive lock on `folder` (created if needed) for the body of the block.

    The lock is `flock` on the folder itself: nothing to clean up, and the kernel releases
    it when the process dies, even by SIGKILL.

    Raises:
        OutputError: another process (another onnxmp run) holds the lock.
    """
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            raise OutputError(
                f"{folder}: another onnxmp run is writing to this output folder; wait for it or choose another -o"
            ) from None
        remove_leftovers(folder)
        yield folder
    finally:
        if created:  # a run that failed before writing anything leaves no empty folder behind
            with contextlib.suppress(OSError):
                folder.rmdir()
        os.close(fd)  # releases the lock


def remove_leftovers(folder: Path) -> None:
    """Remove the staging folders and temporary files that killed runs left in `folder`.

    Only call with the folder locked: a live run's staging folder looks the same.
    """
    for path in folder.iterdir():
        if path.name.startswith(STAGING_PREFIX) and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        elif files.is_temporary(path.name) and path.is_file():
            path.unlink(missing_ok=True)


@contextlib.contextmanager
def staged(folder: Path, owned: Collection[str]) -> Iterator[Path]:
    """A fresh staging folder inside `folder` for the body to write the run's files into.

    When the body ends normally, the staged files replace the previous run's (`switch_in`);
    when it raises, they are discarded and `folder` is left as it was. `owned` names every
    file a run may write, so a kill during an earlier switch leaves nothing behind.
    """
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=folder))
    try:
        yield staging
        switch_in(staging, folder, owned)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def switch_in(staging: Path, folder: Path, owned: Collection[str]) -> None:
    """Move the files of `staging` into `folder` in place of the previous run's files."""
    new = sorted(p.name for p in staging.iterdir() if p.is_file())
    manifest = {"files": {name: _sha256(staging / name) for name in new}}
    files.fsync_dir(staging)
    (folder / MANIFEST).unlink(missing_ok=True)
    files.fsync_dir(folder)  # from here on the folder claims no complete run
    for name in sorted({*owned, *new}):  # all of them first: a rename would replace them one by one
        (folder / name).unlink(missing_ok=True)
    for name in new:
        os.replace(staging / name, folder / name)
    files.fsync_dir(folder)
    model_io.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", folder / MANIFEST)
    files.fsync_dir(folder)


def complete_run(folder: Path) -> dict[str, str] | None:
    """{file name: sha256} of the run `folder` holds whole, or None (no run, or an incomplete one)."""
    listed = _manifest_files(folder)
    if listed is None:
        return None
    for name, digest in listed.items():
        if not (folder / name).is_file() or _sha256(folder / name) != digest:
            return None
    return listed


def _manifest_files(folder: Path) -> dict[str, str] | None:
    try:
        data = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    listed = data.get("files") if isinstance(data, dict) else None
    if not isinstance(listed, dict) or not all(isinstance(v, str) and "/" not in k for k, v in listed.items()):
        return None
    return listed


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
