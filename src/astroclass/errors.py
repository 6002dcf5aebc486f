"""The one exception type astroclass raises for problems a user can fix.

Every message names the file, row or field at fault. The command-line interface prints it
without a traceback and exits with status 1, as it does for the machine's own errors that
:func:`os_error_text` recognises (a full disk, a read-only folder, a damaged file); any other
exception is a bug in astroclass.
"""

from __future__ import annotations


class AstroclassError(Exception):
    """A problem with the user's input (file, row, field, option) or environment."""


class BadImageError(AstroclassError):
    """One image could not be read or is unusable (missing, truncated, all-NaN, wrong bands)."""


def os_error_text(exc: BaseException) -> str | None:
    """One line for an error of the machine rather than of astroclass (a full disk, a read-only or forbidden
    folder, a damaged file read by a library), naming the file where known; None for anything else (a bug)."""
    import errno

    if isinstance(exc, OSError):
        where = exc.filename or ""
        head = f"{where}: " if where else ""
        advice = {errno.ENOSPC: "no space left on the device: free some and run the command again (what it was "
                                "writing was removed; earlier outputs are intact)",
                  errno.EDQUOT: "disk quota exceeded: free some and run the command again",
                  errno.EROFS: "a read-only file system: write the output elsewhere (-o)",
                  errno.EACCES: "permission denied: write the output elsewhere, or fix the folder's permissions",
                  errno.EPERM: "operation not permitted: write the output elsewhere"}.get(exc.errno or -1)
        if advice:
            return head + advice
        text = " ".join(str(exc).split())
        if "filter returned failure" in text or "Can't synchronously read data" in text or "HDF5" in text:
            return (f"{head}a damaged block in an HDF5 file ({text[:160]}); import the dataset again from its "
                    f"sources")
        return None
    import sqlite3

    if isinstance(exc, sqlite3.OperationalError) and "disk is full" in str(exc):
        return ("the results store cannot be written: no space left on the device: free some and run the command "
                "again (the store keeps every result recorded before)")
    if isinstance(exc, sqlite3.OperationalError) and "readonly" in str(exc):
        return "the results store is on a read-only file system or folder: run the grid into a writable one (-e)"
    if isinstance(exc, sqlite3.DatabaseError):
        return (f"the results store is damaged ({' '.join(str(exc).split())[:160]}); see 'astroclass grid status' "
                f"for the store's path, and recover it from a copy or run the grid into a new experiment folder")
    return None
