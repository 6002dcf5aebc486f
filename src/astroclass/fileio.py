"""Writing outputs atomically: readers never see a half-written file, and a failed or interrupted
write leaves whatever was at the target before untouched (and no temporary file behind; one left by a
killed process is removed by the next write into the same folder)."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from astroclass.errors import AstroclassError

_UMASK = os.umask(0)
os.umask(_UMASK)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _temporary_prefix(target: Path) -> str:
    """How a temporary of ``target`` written on this host starts; the writer's pid follows."""
    return f".{target.name}.{socket.gethostname()}-"


def remove_stale_temporaries(target: str | Path) -> list[Path]:
    """Remove the temporaries in ``target``'s folder left by processes of this host that no longer exist (a
    killed write of any output there); those of live writers, and other hosts', are kept. Returns the
    removed paths."""
    import re

    folder = Path(target).parent
    ours = re.compile(rf"^\..+\.{re.escape(socket.gethostname())}-(\d+)\.[^.]+\.tmp$")
    removed = []
    for p in folder.glob(".*.tmp"):
        m = ours.match(p.name)
        if m and not pid_alive(int(m.group(1))):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


@contextmanager
def atomic_output(target: str | Path) -> Iterator[Path]:
    """``with atomic_output(path) as tmp:`` write ``tmp``; on success it replaces ``path`` in one rename.

    The temporary file lies in the target's folder (same file system, so the rename is atomic), is named
    after the target, this host and this process, and gets the permissions a newly created file would
    have; on any error it is removed, and temporaries of the same target whose process was killed are
    removed first.
    """
    target = Path(target)
    remove_stale_temporaries(target)
    try:
        fd, name = tempfile.mkstemp(prefix=f"{_temporary_prefix(target)}{os.getpid()}.", suffix=".tmp",
                                    dir=target.parent)
    except FileNotFoundError:
        raise AstroclassError(f"{target.parent}: folder does not exist (cannot write {target.name})") from None
    except PermissionError:
        raise AstroclassError(f"{target.parent}: not writable (cannot write {target.name})") from None
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def scratch_file(target: str | Path) -> Iterator[int]:
    """A working file beside ``target`` (same disk), open for reading and writing, as a descriptor. It has
    no name: the system frees it when it is closed or its process ends, even a killed one, so it never
    outlives its work."""
    with tempfile.TemporaryFile(dir=Path(target).parent) as fh:
        yield fh.fileno()


def check_output(path: str | Path, overwrite: bool = False, inputs: Sequence[str | Path] = (),
                 what: str = "output") -> Path:
    """The one check of every file astroclass is asked to write, before any work: never one of the command's
    ``inputs`` (whatever ``overwrite`` says), not an existing file unless ``overwrite``, never a folder, and in
    a folder that exists and may be written. Returns the path."""
    path = Path(path)
    for inp in inputs:
        p = Path(inp)
        try:
            same = path.exists() and p.exists() and os.path.samefile(path, p)
        except OSError:
            same = False
        if same or os.path.abspath(path) == os.path.abspath(p):
            raise AstroclassError(f"{path}: is also an input of this command; astroclass never writes over its "
                                  f"inputs: choose another {what}")
    if path.is_dir():
        raise AstroclassError(f"{path}: is a folder; the {what} is a file")
    if path.exists() and not overwrite:
        raise AstroclassError(f"{path}: {what} exists (pass --overwrite to replace it)")
    parent = path.parent
    if not parent.is_dir():
        raise AstroclassError(f"{parent}: folder does not exist (cannot write {path.name})")
    if not os.access(parent, os.W_OK):
        raise AstroclassError(f"{parent}: not writable (cannot write {path.name})")
    return path


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def save_figure(fig, path: str | Path, **kw) -> Path:
    """``fig.savefig`` through a temporary (format from the target's suffix, PNG when it has none)."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    if fmt not in fig.canvas.get_supported_filetypes():
        raise AstroclassError(f"{path}: cannot write a figure as .{fmt}; use one of "
                              f"{', '.join('.' + k for k in sorted(fig.canvas.get_supported_filetypes()))}")
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format=fmt, **kw)
    return path


def torch_save(obj: object, path: str | Path, shown: str | Path | None = None) -> None:
    """``torch.save`` through a Python file, so that a failed write (a full disk) is the OSError it is,
    naming ``shown`` (default ``path``: the file the user knows, where ``path`` is its temporary), rather than
    torch's "enforce fail" with no cause."""
    import torch

    try:
        with open(path, "wb") as fh:
            torch.save(obj, fh)
    except RuntimeError as exc:
        cause = exc.__context__
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__context__
        if isinstance(cause, OSError):
            raise OSError(cause.errno, cause.strerror, str(shown or path)) from None
        raise
