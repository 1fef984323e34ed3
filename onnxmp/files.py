"""Small file-system facts the writers share: the user's umask, synced folders, our temporaries.

Why: outputs are written through temporary files (`tempfile.mkstemp`, mode 0600) that are
renamed into place; without a chmod every output would be private to its owner whatever
the user's umask says. Killed runs leave such temporaries behind; their names are
recognised here so that the next run can remove them.
"""

from __future__ import annotations

import os
import re

TEMPORARY_SUFFIX = ".tmp"
# `.{name}.XXXXXXXX.tmp`: tempfile.mkstemp's 8 random characters between our prefix and suffix
_TEMPORARY = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


def umask() -> int:
    """The process umask, read from /proc where possible (os.umask can only read by writing)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def user_mode() -> int:
    """The mode a new file of the user's gets: 0666 less the umask (e.g. 0644 under umask 022)."""
    return 0o666 & ~umask()


def is_temporary(name: str) -> bool:
    """Whether `name` is one of our temporary files (`model_io` writes through them).

    >>> is_temporary(".plan.json.k3j_8abz.tmp"), is_temporary("plan.json"), is_temporary(".x.tmp")
    (True, False, False)
    """
    return _TEMPORARY.fullmatch(name) is not None


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make the renames and unlinks done in `folder` durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
