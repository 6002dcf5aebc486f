"""Catalogues in and out, through astropy: the table formats astronomers use, and positions on the sky.

Read: CSV (and the other ASCII tables astropy recognises), ECSV, FITS tables, VOTable and Parquet.
Write: the format follows the output's extension (``.csv``, ``.ecsv``, ``.fits``, ``.parquet``,
``.vot``/``.xml``), checked before any work; a model card travels in the table's metadata (FITS header
keywords, VOTable ``INFO`` elements, ECSV and Parquet metadata).

Positions: a pair of longitude/latitude columns (RA/Dec under any of their usual names, or galactic l/b,
or any frame astropy knows) becomes a :class:`~astropy.coordinates.SkyCoord`; every row that cannot be
used (empty, not a number or an angle, out of range) is named.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from astroclass.errors import AstroclassError

_READ = {".csv": "ascii.csv", ".ecsv": "ascii.ecsv", ".tsv": "ascii.tab", ".fits": "fits", ".fit": "fits",
         ".fts": "fits", ".vot": "votable", ".xml": "votable", ".votable": "votable", ".parquet": "parquet"}
"""Extension → astropy format for reading; anything else is read as an ASCII table of a form astropy guesses
(whitespace-separated, with or without a header line, IPAC, CDS, ...)."""
WRITE_FORMATS = {".csv": "ascii.csv", ".ecsv": "ascii.ecsv", ".fits": "fits", ".fit": "fits", ".fts": "fits",
                 ".parquet": "parquet", ".vot": "votable", ".xml": "votable", ".votable": "votable"}
"""Extension → astropy format of every catalogue astroclass writes."""
_COMPRESSED = (".gz", ".bz2", ".xz")


def _suffix(path: str | Path) -> str:
    """The format-telling extension: ``cat.fits.gz`` → ``.fits``."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] in _COMPRESSED:
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


def is_table_file(path: str | Path) -> bool:
    """Whether ``path`` holds a table (a catalogue) rather than images: by extension, and for FITS by whether
    its first HDU with data is a table."""
    suffix = _suffix(path)
    if suffix in (".fits", ".fit", ".fts"):
        from astropy.io import fits

        try:
            with fits.open(path) as hdul:
                for hdu in hdul:
                    if hdu.header.get("NAXIS", 0) and (hdu.is_image is False or hdu.header.get("XTENSION") in
                                                       ("BINTABLE", "TABLE")):
                        return True
                    if getattr(hdu, "is_image", False) and hdu.header.get("NAXIS", 0) >= 2:
                        return False
        except Exception:  # an unreadable FITS file is an image that fails as such, with its reason
            return False
        return False
    return suffix in _READ and _READ[suffix] != "fits"


def read_catalog(path: str | Path) -> Any:
    """The table in ``path`` (an astropy ``Table``), or an error naming the file and what is wrong with it."""
    from astropy.table import Table
    from astropy.utils.exceptions import AstropyWarning

    path = Path(path)
    if not path.is_file():
        raise AstroclassError(f"{path}: catalogue not found")
    fmt = _READ.get(_suffix(path), "ascii")
    if fmt == "parquet":
        from astroclass.extras import require

        require("pyarrow", "reading Parquet catalogues")
    kw: dict[str, Any] = {"format": fmt}
    if fmt == "ascii.csv":
        kw["encoding"] = "utf-8-sig"  # a spreadsheet's byte-order mark is not part of the first column's name
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyWarning)  # unknown units, VOTable version notes
            table = Table.read(path, **kw)
    except Exception as exc:
        text = " ".join(str(exc).split())
        raise AstroclassError(f"{path}: not a readable {fmt} catalogue ({type(exc).__name__}: {text[:200]})") from None
    if not len(table.colnames):
        raise AstroclassError(f"{path}: the catalogue has no columns")
    return table


def output_format(path: str | Path) -> str:
    """The astropy format of the catalogue ``path`` names, or an error (before any work) for an unknown one."""
    suffix = _suffix(path)
    if suffix not in WRITE_FORMATS or Path(path).suffix.lower() in _COMPRESSED:
        raise AstroclassError(f"{path}: unknown catalogue format {Path(path).suffix or '(no extension)'!r}; write "
                              f".csv, .ecsv, .fits, .parquet or .vot/.xml (VOTable)")
    fmt = WRITE_FORMATS[suffix]
    if fmt == "parquet":
        from astroclass.extras import require

        require("pyarrow", "writing Parquet catalogues")
    return fmt


def row_name(path: str | Path, index: int) -> str:
    """How messages name a catalogue's row ``index`` (0-based): ``FILE, row N`` counting data rows from 1, as
    TOPCAT and astropy show them, with the line of a CSV file (its header is line 1)."""
    line = f" (line {index + 2})" if _suffix(path) in (".csv", ".tsv") else ""
    return f"{path}, row {index + 1}{line}"


def column_error(where: str, what: str, name: str, columns: Sequence[str], option: str) -> AstroclassError:
    """The error for a column option naming a column the table does not have."""
    return AstroclassError(f"{where}: no {what} column {name!r}; columns are {list(columns)} (use {option})")


def text_column(table: Any, name: str) -> list[str]:
    """A column's values as stripped text, empty where masked or missing."""
    col = table[name]
    mask = np.ma.getmaskarray(col) if hasattr(col, "mask") else np.zeros(len(col), bool)
    out = []
    for v, m in zip(np.asarray(col), mask):
        if m:
            out.append("")
            continue
        s = v.decode(errors="replace") if isinstance(v, bytes) else str(v)
        out.append("" if s == "nan" and isinstance(v, (float, np.floating)) else s.strip())
    return out


def write_catalog(table: Any, path: str | Path, meta: Mapping[str, tuple[Any, str]] | None = None) -> Path:
    """Write ``table`` in the format of ``path``'s extension, atomically (a temporary beside it, renamed at the
    end). ``meta``: {KEYWORD: (value, comment)}, at most 8-letter upper-case keywords, written as FITS header
    keywords, VOTable INFO elements, or the ECSV/Parquet table metadata (CSV has no place for it)."""
    from astroclass.fileio import atomic_output

    path = Path(path)
    fmt = output_format(path)
    table = table.copy(copy_data=False)
    meta = dict(meta or {})
    with atomic_output(path) as tmp, warnings.catch_warnings():
        from astropy.utils.exceptions import AstropyWarning

        warnings.simplefilter("ignore", AstropyWarning)
        if fmt == "votable":
            from astropy.io.votable import from_table
            from astropy.io.votable.tree import Info

            vot = from_table(table)
            for key, (value, comment) in meta.items():
                vot.resources[0].infos.append(Info(name=key, value=str(value), content=comment))
            vot.to_xml(str(tmp))
        else:
            if fmt == "fits":
                table.meta = {k: (v, c) for k, (v, c) in meta.items()}
            elif fmt != "ascii.csv":
                table.meta = {k: v for k, (v, _) in meta.items()}
            else:
                table.meta = {}
            table.write(tmp, format=fmt, overwrite=True)
    return path


# ---------------------------------------------------------------------------------------------
# positions

COORD_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("ra", "dec", "icrs"), ("raj2000", "dej2000", "fk5"), ("_raj2000", "_dej2000", "fk5"),
    ("raj2000", "decj2000", "fk5"), ("ra_icrs", "de_icrs", "icrs"), ("ra_deg", "dec_deg", "icrs"),
    ("radeg", "dedeg", "icrs"), ("alpha_j2000", "delta_j2000", "fk5"), ("ra_j2000", "dec_j2000", "fk5"),
    ("l", "b", "galactic"), ("glon", "glat", "galactic"), ("gal_l", "gal_b", "galactic"),
)
"""Longitude/latitude column pairs looked for (case-insensitively, in this order) when none are named, with
the frame each implies."""


@dataclass
class Positions:
    """The sky positions of a catalogue's rows: ``coords`` for the usable rows ``rows``; ``bad`` gives the
    reason for every other row (0-based row → text)."""

    coords: Any  # SkyCoord over `rows`
    rows: np.ndarray
    bad: dict[int, str]
    columns: tuple[str, str]
    frame: str


def coordinate_columns(table: Any, where: str, ra_col: str | None = None, dec_col: str | None = None,
                       frame: str | None = None) -> tuple[str, str, str]:
    """(longitude column, latitude column, frame): the columns named, or the first usual pair the table has."""
    cols = list(table.colnames)
    if (ra_col is None) != (dec_col is None):
        raise AstroclassError(f"{where}: name both coordinate columns (--ra-col and --dec-col), or neither")
    if ra_col is not None and dec_col is not None:
        for name, opt in ((ra_col, "--ra-col"), (dec_col, "--dec-col")):
            if name not in cols:
                raise column_error(where, "coordinate", name, cols, opt)
        return ra_col, dec_col, _frame_name(frame or "icrs", where)
    lower = {c.lower(): c for c in cols}
    for lon, lat, implied in COORD_COLUMNS:
        if lon in lower and lat in lower:
            return lower[lon], lower[lat], _frame_name(frame or implied, where)
    tried = ", ".join(f"{a}/{b}" for a, b, _ in COORD_COLUMNS)
    raise AstroclassError(f"{where}: no RA/Dec columns (looked for {tried}, in any case); columns are {cols}: name "
                          f"them with --ra-col and --dec-col (and --frame for other than ICRS)")


def _frame_name(frame: str, where: str) -> str:
    from astropy.coordinates import frame_transform_graph

    if frame_transform_graph.lookup_name(frame.lower()) is None:
        raise AstroclassError(f"{where}: unknown coordinate frame {frame!r}; use one astropy knows, e.g. icrs, fk5, "
                              f"fk4, galactic, ecliptic (geocentricmeanecliptic), supergalactic")
    return frame.lower()


def _angles(table: Any, name: str, is_lon: bool) -> tuple[np.ndarray, dict[int, str]]:
    """Degrees per row (NaN where unusable) and the reason for each unusable row."""
    import astropy.units as u
    from astropy.coordinates import Angle

    col = table[name]
    n = len(col)
    mask = np.ma.getmaskarray(col) if hasattr(col, "mask") else np.zeros(n, bool)
    unit = getattr(col, "unit", None)
    bad: dict[int, str] = {}
    values = np.full(n, np.nan)
    if col.dtype.kind in "iuf":
        scale = 1.0
        if unit is not None:
            try:
                scale = (1 * unit).to_value(u.deg)
            except (u.UnitConversionError, TypeError):
                raise AstroclassError(f"column {name!r} has unit {unit}, which is not an angle") from None
        raw = np.asarray(col, dtype=np.float64) * scale
        values = np.where(mask, np.nan, raw)
        for i in np.flatnonzero(mask):
            bad[int(i)] = f"empty {name!r}"
        for i in np.flatnonzero(~mask & ~np.isfinite(raw)):
            bad[int(i)] = f"{name!r} is {raw[i]}"
    else:
        for k, (v, m) in enumerate(zip(np.asarray(col), mask)):
            text = "" if m else (v.decode(errors="replace") if isinstance(v, bytes) else str(v)).strip()
            if not text:
                bad[k] = f"empty {name!r}"
                continue
            try:
                values[k] = float(text)
            except ValueError:
                try:  # sexagesimal: units as the text gives them (10h57m40s, 39d07m), else RA in hours
                    if any(ch.isalpha() or ch in "°'\"" for ch in text):
                        angle = Angle(text)
                    else:
                        angle = Angle(text, unit=u.hourangle if is_lon else u.deg)
                    values[k] = angle.to_value(u.deg)
                except Exception:
                    bad[k] = f"{name!r} is {text[:40]!r}, not a number nor an angle"
                    continue
            if not np.isfinite(values[k]):
                bad[k] = f"{name!r} is {text[:40]!r}"
    return values, bad


def sky_positions(table: Any, where: str, ra_col: str | None = None, dec_col: str | None = None,
                  frame: str | None = None) -> Positions:
    """Every row's position: the usable ones as a SkyCoord, the others with their reason (a latitude beyond
    ±90°, an equatorial RA outside 0–360°, an empty or non-numeric cell)."""
    import astropy.units as u
    from astropy.coordinates import SkyCoord

    lon_name, lat_name, frame = coordinate_columns(table, where, ra_col, dec_col, frame)
    try:
        lon, bad = _angles(table, lon_name, True)
        lat, bad_lat = _angles(table, lat_name, False)
    except AstroclassError as exc:
        raise AstroclassError(f"{where}: {exc}") from None
    for i, reason in bad_lat.items():
        bad.setdefault(i, reason)
    for j in np.flatnonzero(np.isfinite(lat) & (np.abs(lat) > 90)).tolist():
        bad.setdefault(j, f"{lat_name!r} is {lat[j]:g}°, beyond ±90°")
    if frame not in ("galactic", "supergalactic"):
        for j in np.flatnonzero(np.isfinite(lon) & ((lon < 0) | (lon > 360))).tolist():
            bad.setdefault(j, f"{lon_name!r} is {lon[j]:g}°, outside 0–360°")
    rows = np.array([i for i in range(len(table)) if i not in bad], dtype=np.int64)
    coords = SkyCoord(lon[rows] * u.deg, lat[rows] * u.deg, frame=frame)
    return Positions(coords, rows, bad, (lon_name, lat_name), frame)


def storable_columns(table: Any) -> dict[str, np.ndarray]:
    """The table's columns as plain arrays HDF5 can hold (masked cells filled: NaN, 0 or empty text; text as
    UTF-8 bytes), for keeping every catalogue column with the objects it describes."""
    out: dict[str, np.ndarray] = {}
    for name in table.colnames:
        col = table[name]
        if getattr(col, "ndim", 1) != 1:
            continue  # vector cells (spectra, arrays) are not per-object scalars
        mask = np.ma.getmaskarray(col) if hasattr(col, "mask") else None
        arr = np.asarray(col)
        if arr.dtype.kind in "US" or arr.dtype == object:
            arr = np.array([s.encode() for s in text_column(table, name)], dtype=object)
        elif arr.dtype.kind == "f" and mask is not None:
            arr = np.where(mask, np.nan, arr)
        elif mask is not None and mask.any():
            arr = np.where(mask, 0, arr)
        elif arr.dtype.kind not in "iufb":
            continue  # times, quantities with structure: left to the catalogue itself
        out[name] = arr
    return out
