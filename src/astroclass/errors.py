"""The one exception type astroclass raises for problems a user can fix.

Every message names the file, row or field at fault. The command-line interface prints it
without a traceback and exits with status 1; any other exception is a bug in astroclass.
"""

from __future__ import annotations


class AstroclassError(Exception):
    """A problem with the user's input (file, row, field, option) or environment."""


class BadImageError(AstroclassError):
    """One image could not be read or is unusable (missing, truncated, all-NaN, wrong bands)."""
