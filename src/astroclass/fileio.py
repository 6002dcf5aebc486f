"""Writing outputs atomically: readers never see a half-written file, and a failed or interrupted
write leaves whatever was at the target before untouched (and no temporary file behind)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_output(target: str | Path) -> Iterator[Path]:
    """``with atomic_output(path) as tmp:`` write ``tmp``; on success it replaces ``path`` in one rename.

    The temporary file lies in the target's folder (same file system, so the rename is atomic) and
    gets the permissions a newly created file would have; on any error it is removed.
    """
    target = Path(target)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
