"""Importers: turn images and labels from a source into a prepared dataset.

Every importer lists :class:`Item` s (where an image is, its label, its id) and hands them to
:func:`build_dataset`, which decodes them in parallel, checks them, splits them and writes the
HDF5 file. Bad items (missing, unreadable, all-NaN, wrong band count) stop the import with an
error naming the file, or, with ``skip_bad=True``, are left out and listed in
``OUTPUT.skipped.csv`` beside the output.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import tarfile
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from astroclass.data.images import ImageSpec, array_to_stored, is_image_file, read_image
from astroclass.data.prepared import WRITE_ROWS, PreparedWriter
from astroclass.data.splits import stratified_split
from astroclass.errors import AstroclassError, BadImageError
from astroclass.fileio import atomic_output, atomic_write_text, scratch_file
from astroclass.parallel import parallel_imap
from astroclass.progress import Bar

DUPLICATE_POLICIES = ("together", "drop", "error")


@dataclass(frozen=True)
class Item:
    """One object to import: an image file (or a row of an HDF5 image array) and its label."""

    source: str
    label: str
    id: str
    rel: str  # the path recorded in the dataset (relative to the source root)
    h5_key: str | None = None  # when set, source is an .h5 file and the image is h5[h5_key][h5_row]
    h5_row: int = -1


@dataclass
class ImportReport:
    """What an import did: written counts, skipped items, duplicate groups, warnings."""

    output: Path
    n_written: int = 0
    content_hash: str = ""
    class_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (source, reason)
    duplicates: list[list[str]] = field(default_factory=list)  # groups of ids with identical pixels
    warnings: list[str] = field(default_factory=list)
    images_per_second: float = 0.0


def _decode(item: Item, spec: ImageSpec) -> tuple[np.ndarray | None, tuple[str, ...], str, str]:
    """Decode one item; returns (array, band names, error text, digest of the stored pixels). Runs in
    worker processes."""
    try:
        if item.h5_key is not None:
            import h5py

            with h5py.File(item.source, "r") as f:
                arr = array_to_stored(np.asarray(f[item.h5_key][item.h5_row]), spec,
                                      f"{item.source}[{item.h5_key}][{item.h5_row}]")
            return arr, (), "", pixel_digest(arr)
        dec = read_image(item.source, spec)
        return dec.array, dec.band_names, "", pixel_digest(dec.array)
    except BadImageError as exc:
        return None, (), str(exc), ""


def pixel_digest(image: np.ndarray) -> str:
    """What tells identical images apart: a digest of the stored pixels (and their shape and type)."""
    return hashlib.sha1(repr((image.shape, image.dtype.str)).encode() + np.ascontiguousarray(image).tobytes()
                        ).hexdigest()


def _to_float(image: np.ndarray) -> np.ndarray:
    """An 8-bit image in a dataset stored as float16 (some sources were FITS): scaled to [0, 1]."""
    return image.astype(np.float16) / np.float16(255) if image.dtype == np.uint8 else image


class _Scratch:
    """Decoded images on disk while an import decides what it keeps: one raw file beside the output per
    image shape and type, appended in order and read back row by row; removed when the import ends."""

    def __init__(self, output: Path, stack: ExitStack):
        self.output, self.stack = output, stack
        self.files: dict[tuple, tuple[int, int]] = {}  # (shape, dtype) -> (fd, rows)

    def add(self, image: np.ndarray) -> tuple[tuple, int]:
        key = (image.shape, image.dtype.str)
        if key not in self.files:
            self.files[key] = (self.stack.enter_context(scratch_file(self.output)), 0)
        fd, rows = self.files[key]
        try:
            os.write(fd, np.ascontiguousarray(image).tobytes())
        except OSError as exc:  # a full disk: named by the output, beside which the working file lies
            raise OSError(exc.errno, exc.strerror, str(self.output)) from None
        self.files[key] = (fd, rows + 1)
        return key, rows

    def read(self, key: tuple, row: int) -> np.ndarray:
        shape, dtype = key
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        buf = os.pread(self.files[key][0], nbytes, row * nbytes)
        return np.frombuffer(buf, dtype=dtype).reshape(shape)


def build_dataset(items: Sequence[Item], output: str | Path, spec: ImageSpec | None = None, *,
                  source: dict, class_names: Sequence[str] | None = None,
                  fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0,
                  workers: int | None = None, skip_bad: bool = False, overwrite: bool = False,
                  min_per_class: int = 10, duplicates: str = "together",
                  columns: dict[str, np.ndarray] | None = None, show_progress: bool = True,
                  skipped: Sequence[tuple[str, str]] = (),
                  decoded: Iterable[tuple[int, np.ndarray | None, tuple[str, ...], str, str]] | None = None
                  ) -> ImportReport:
    """Decode, check, split and write ``items`` as a prepared dataset at ``output`` (``skipped``: what the
    source listing already left out, for ``OUTPUT.skipped.csv``).

    Images stream through: decoded in parallel into a scratch file beside the output (with a digest of
    each, to find identical ones), then copied block by block into the dataset once it is known which are
    kept, so memory does not grow with the number of images. ``decoded``, when given, replaces the decoding of
    each item's file: (item index, array or None, band names, error, :func:`pixel_digest`) for every item, in
    any order (cut-outs from survey images come image by image).

    ``class_names=[]`` makes an unlabelled dataset (labels -1, every object in the test split): objects to
    classify, not to train on."""
    import time

    from astroclass.fileio import check_output

    spec = spec or ImageSpec()
    output = Path(output)
    check_output(output, overwrite, sorted({it.source for it in items} | ({str(source["path"])} if
                                                                          source.get("path") else set())), "output")
    if duplicates not in DUPLICATE_POLICIES:
        raise AstroclassError(f"duplicates policy must be one of {DUPLICATE_POLICIES}, got {duplicates!r}")
    if not items:
        raise AstroclassError(f"{source.get('path', 'source')}: no images to import")
    report = ImportReport(output=output)
    if class_names is None:
        class_names = sorted({it.label for it in items})
    labelled = bool(class_names)
    if labelled and len(class_names) < 2:  # fine to classify and to check predictions against; training refuses it
        report.warnings.append(f"one class only ({list(class_names)}): a dataset to classify and to check "
                               f"predictions against, not to train a classifier on (that needs two classes)")
    class_index = {c: i for i, c in enumerate(class_names)}
    unknown = sorted({it.label for it in items} - set(class_index)) if labelled else []
    if unknown:
        raise AstroclassError(f"labels {unknown[:5]} are not among the classes {list(class_names)}")

    with ExitStack() as stack:
        scratch = _Scratch(output, stack)
        where: list[tuple[tuple, int] | None] = [None] * len(items)  # per item: its scratch file and row
        digests: list[str] = [""] * len(items)
        bad: list[tuple[int, str]] = []
        band_names: tuple[str, ...] = ()
        t0 = time.perf_counter()
        with Bar(show_progress, len(items), f"decoding {len(items)} images") as bar:
            results = decoded if decoded is not None else \
                ((i, *r) for i, r in enumerate(parallel_imap(_decode, items, (spec,), workers)))
            for i, arr, bands, err, digest in results:
                bar.advance(1)
                digests[i] = digest
                if arr is None:
                    bad.append((i, err))
                    continue
                where[i] = scratch.add(arr)
                band_names = band_names or bands
        elapsed = time.perf_counter() - t0
        report.images_per_second = len(items) / elapsed if elapsed > 0 else 0.0

        keep = [i for i, w in enumerate(where) if w is not None]
        # every image must have the same band count; the most common one wins
        shapes = Counter(where[i][0][0] for i in keep)  # type: ignore[index]
        if len(shapes) > 1:
            main_shape = shapes.most_common(1)[0][0]
            for i in keep:
                shp = where[i][0][0]  # type: ignore[index]
                if shp != main_shape:
                    hint = f" (8-bit images are read as {spec.channels} channel(s); --channels " \
                           f"{main_shape[0]} reads them as {main_shape[0]})" \
                        if {shp[0], main_shape[0]} == {1, 3} and spec.channels == shp[0] else ""
                    bad.append((i, f"{items[i].source}: has {shp[0]} band(s), while {shapes[main_shape]} other "
                                   f"images have {main_shape[0]}{hint}"))
            keep = [i for i in keep if where[i][0][0] == main_shape]  # type: ignore[index]
        if bad and not skip_bad:
            first = sorted(bad)[0][1]
            more = f" (and {len(bad) - 1} more bad image(s); pass --skip-bad to leave them out)" if len(bad) > 1 \
                else " (pass --skip-bad to leave it out)"
            raise AstroclassError(first + more)
        report.skipped = list(skipped) + [(items[i].source, err) for i, err in sorted(bad)]
        if not keep:
            raise AstroclassError(f"{source.get('path', 'source')}: no readable images")
        as_float = any(where[i][0][1] == np.dtype(np.float16).str for i in keep)  # type: ignore[index]
        if as_float:  # 8-bit images will be stored as floats: identical means identical as stored
            for i in keep:
                key, row = where[i]  # type: ignore[misc]
                if key[1] == np.dtype(np.uint8).str:
                    digests[i] = pixel_digest(_to_float(scratch.read(key, row)))

        kept_items = [items[i] for i in keep]
        labels = np.array([class_index[it.label] if labelled else -1 for it in kept_items], dtype=np.int64)
        # exact duplicates: identical stored pixels
        groups, dup_groups = _duplicate_groups([digests[i] for i in keep])
        conflicting = [g for g in dup_groups if len(set(labels[g])) > 1]
        if conflicting:  # one image, two labels: which is right cannot be known
            ex = [(kept_items[j].rel, kept_items[j].label) for j in conflicting[0]]
            if not skip_bad:
                raise AstroclassError(f"{len(conflicting)} image(s) appear with different labels, e.g. identical "
                                      f"pixels in {ex}; fix the labels, or pass --skip-bad to leave every copy out")
            drop = {int(j) for g in conflicting for j in g}
            report.skipped += [(kept_items[j].source, f"identical to {[kept_items[k].rel for k in g if k != j]} "
                                f"with another label") for g in conflicting for j in g]
            sel = [i for i in range(len(kept_items)) if i not in drop]
            if not sel:
                raise AstroclassError(f"{source.get('path', 'source')}: no images left after leaving out those "
                                      f"with conflicting labels")
            kept_items, keep, labels = [kept_items[i] for i in sel], [keep[i] for i in sel], labels[sel]
            groups, dup_groups = _duplicate_groups([digests[i] for i in keep])
        report.duplicates = [[kept_items[j].id for j in g] for g in dup_groups]
        if dup_groups:
            desc = f"{len(dup_groups)} group(s) of identical images, e.g. {[kept_items[j].rel for j in dup_groups[0]]}"
            if duplicates == "error":
                raise AstroclassError(f"duplicate images found: {desc} (use --duplicates together|drop)")
            if duplicates == "drop":
                drop = {int(j) for g in dup_groups for j in g[1:]}
                sel = [i for i in range(len(kept_items)) if i not in drop]
                report.skipped += [(kept_items[j].source, "duplicate of " + kept_items[groups[j]].source)
                                   for j in sorted(drop)]
                kept_items, keep, labels, groups = [kept_items[i] for i in sel], [keep[i] for i in sel], \
                    labels[sel], groups[sel]
            else:
                report.warnings.append(f"{desc}: each group is kept within one split")

        present = np.bincount(labels, minlength=len(class_names)) if labelled else np.zeros(0, np.int64)
        empty = [c for c, n in zip(class_names, present) if n == 0]
        if empty:
            raise AstroclassError(f"class(es) {empty} have no readable images")
        split = stratified_split(labels, class_names, fractions, seed, groups) if labelled else \
            np.full(len(labels), 2, np.uint8)  # objects to classify: all of them held out
        for c, n in zip(class_names, present):
            if n < min_per_class:
                report.warnings.append(f"class {c!r} has only {n} images (minimum {min_per_class})")

        col_arrays = {k: np.asarray(v)[keep] for k, v in (columns or {}).items()}
        options = {"image_spec": spec.to_dict(), "fractions": list(fractions), "seed": seed,
                   "skip_bad": skip_bad, "duplicates": duplicates, "n_skipped": len(report.skipped)}
        main_shape = where[keep[0]][0][0]  # type: ignore[index]
        with _side_report(report), \
                PreparedWriter(output, len(keep), main_shape, np.float16 if as_float else np.uint8, class_names,
                               overwrite) as writer, \
                Bar(show_progress, len(keep), f"writing {output.name}") as bar:
            for b in range(0, len(keep), WRITE_ROWS):
                block = [scratch.read(*where[i]) for i in keep[b:b + WRITE_ROWS]]  # type: ignore[misc]
                writer.append(np.stack([_to_float(a) for a in block] if as_float else block))
                bar.advance(len(block))
            report.content_hash = writer.finish(
                labels=labels, split=split, ids=[it.id for it in kept_items], paths=[it.rel for it in kept_items],
                spec=spec, source=source, options=options, band_names=band_names, split_seed=seed,
                columns=col_arrays)
    report.n_written = len(kept_items)
    report.class_counts = {
        s: {c: int(((split == k) & (labels == i)).sum()) for i, c in enumerate(class_names)} if labelled else
        {"(unlabelled)": int((split == k).sum())} for k, s in enumerate(("train", "val", "test"))}
    return report


def _duplicate_groups(digests: Sequence[str]) -> tuple[np.ndarray, list[np.ndarray]]:
    """(index of the first identical image, per image; the groups of identical images, as index arrays), from
    each image's :func:`pixel_digest`."""
    first_of: dict[str, int] = {}
    groups = np.array([first_of.setdefault(d, i) for i, d in enumerate(digests)], dtype=np.int64)
    repeated = [g for g, n in Counter(groups.tolist()).items() if n > 1]
    return groups, [np.flatnonzero(groups == g) for g in repeated]


@contextmanager
def _side_report(report: ImportReport):
    """Write ``OUTPUT.skipped.csv`` (or remove a stale one) before the dataset is written, so that a new
    ``.h5`` never sits beside an older list; if writing the dataset fails, the previous list comes back."""
    side = report.output.with_name(report.output.name + ".skipped.csv")
    before = side.read_bytes() if side.is_file() else None
    if report.skipped:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["source", "reason"])
        w.writerows(report.skipped)
        atomic_write_text(side, buf.getvalue())
    else:
        side.unlink(missing_ok=True)
    try:
        yield
    except BaseException:
        if before is None:
            side.unlink(missing_ok=True)
        else:
            with atomic_output(side) as tmp:
                tmp.write_bytes(before)
        raise


# ---------------------------------------------------------------------------------------------
# sources


def folder_items(root: str | Path, skip_bad: bool = False, skipped: list | None = None) -> list[Item]:
    """An ImageFolder-style tree: one sub-folder per class, images anywhere below it."""
    root = Path(root)
    if not root.is_dir():
        raise AstroclassError(f"{root}: folder not found")
    items: list[Item] = []
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise AstroclassError(f"{root}: no class sub-folders (expected ROOT/CLASS/image files)")
    for d in class_dirs:
        files = sorted(p for p in d.rglob("*") if p.is_file() and is_image_file(p))
        if not files:
            msg = f"{d}: class folder {d.name!r} holds no images"
            if not skip_bad:
                raise AstroclassError(msg + " (remove it, or pass --skip-bad to leave the class out)")
            if skipped is not None:
                skipped.append((str(d), msg))
            continue
        for p in files:
            rel = p.relative_to(root).as_posix()
            items.append(Item(str(p), d.name, rel.rsplit(".", 1)[0], rel))
    return items


def read_table(path: str | Path) -> tuple[list[str], list[dict[str, str]]]:
    """Columns and rows of a catalogue, values as text: CSV read as written, every other format (FITS table,
    VOTable, Parquet, ECSV, ASCII tables) through astropy."""
    path = Path(path)
    if not path.is_file():
        raise AstroclassError(f"{path}: catalogue not found")
    if path.suffix.lower() != ".csv":
        from astroclass.catalogs import read_catalog, text_column

        tab = read_catalog(path)
        cols = list(tab.colnames)
        values = {c: text_column(tab, c) for c in cols}
        return cols, [{c: values[c][i] for c in cols} for i in range(len(tab))]
    from astroclass.catalogs import row_name

    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            cols = list(reader.fieldnames or [])
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise AstroclassError(f"{path}: not a readable CSV file ({exc})") from None
    for i, row in enumerate(rows):
        if None in row:  # csv.DictReader puts fields beyond the header's under None
            n = len(cols) + len(row[None])
            raise AstroclassError(f"{row_name(path, i)}: {n} fields, the header has {len(cols)}: a comma inside a "
                                  f"value? quote the value (\"spiral, barred\")")
    return cols, rows


def catalog_path(root: Path, rel: str, where: str, allow_outside: bool = False) -> Path:
    """The file a catalogue row names: ``rel`` relative to ``root``. A path that leaves ``root`` (absolute,
    or climbing out with ``..``) is an error naming ``where`` unless ``allow_outside``: a catalogue from
    elsewhere must not make astroclass read files its user did not mean to give it."""
    full = Path(os.path.normpath(root / rel))
    if allow_outside:
        return full
    if not Path(os.path.abspath(full)).is_relative_to(os.path.abspath(root)):
        raise AstroclassError(f"{where}: {rel!r} is outside {root}, the folder the catalogue's paths are relative "
                              f"to (pass --allow-outside to read files elsewhere)")
    target = os.path.realpath(full)  # a link inside the folder may lead out of it
    if not Path(target).is_relative_to(os.path.realpath(root)):
        raise AstroclassError(f"{where}: {rel!r} is a link to {target}, outside {root}, the folder the catalogue's "
                              f"paths are relative to (pass --allow-outside to read files elsewhere)")
    return full


def catalog_items(catalog: str | Path, root: str | Path | None = None, path_col: str = "path",
                  label_col: str = "label", id_col: str | None = None, allow_outside: bool = False) -> list[Item]:
    """A CSV (or FITS table) with an image-path column and a label column; paths relative to root (default:
    the catalogue's folder), which they may not leave unless ``allow_outside``."""
    from astroclass.catalogs import row_name

    catalog = Path(catalog)
    cols, rows = read_table(catalog)
    return table_items(cols, rows, str(catalog), Path(root) if root is not None else catalog.parent, path_col,
                       label_col, id_col, allow_outside, lambda i: row_name(catalog, i))


def _cell(value: Any) -> str:
    """A catalogue cell as text: missing (None, or a DataFrame's NaN) is empty."""
    return "" if value is None or (isinstance(value, float) and value != value) else str(value).strip()


def table_items(cols: Sequence[str], rows: Iterable[Mapping[str, Any]], where: str, root: Path, path_col: str,
                label_col: str, id_col: str | None, allow_outside: bool,
                row_of: Callable[[int], str]) -> list[Item]:
    """The items of a catalogue's rows (a file's, or a table in memory), each checked, errors naming ``where``
    and the row as ``row_of(0-based index)`` names it."""
    for name, col in (("path", path_col), ("label", label_col), ("id", id_col)):
        if col is not None and col not in cols:
            raise AstroclassError(f"{where}: no {name} column {col!r}; columns are {list(cols)}")
    items = []
    for n, row in enumerate(rows):
        rel, label = _cell(row.get(path_col)), _cell(row.get(label_col))
        at = row_of(n)
        if not rel:
            raise AstroclassError(f"{at}: empty {path_col!r}")
        if not label:
            raise AstroclassError(f"{at}: empty {label_col!r} for {rel}")
        ident = _cell(row.get(id_col)) if id_col else Path(rel).stem
        full = catalog_path(root, rel, at, allow_outside)
        items.append(Item(str(full), label, ident or Path(rel).stem, rel))
    return items


# ---------------------------------------------------------------------------------------------
# EFIGI

EFIGI_VIEWS = ("EF-2", "EF-4", "EF-15")
_EFIGI_GROUPS = {  # the paper's groupings of the EFIGI Hubble type T
    "Elliptical": range(-6, -3),   # -6, -5, -4
    "Lenticular": range(-3, 0),    # -3, -2, -1
    "Spiral": range(0, 10),        # 0 .. 9
    "Irregular": range(10, 11),    # 10
}


def read_efigi_catalog(path: str | Path) -> list[tuple[str, int]]:
    """(PGC name, Hubble type T) for every galaxy of an EFIGI_attributes.txt file."""
    path = Path(path)
    if not path.is_file():
        raise AstroclassError(f"{path}: EFIGI catalogue not found")
    out: list[tuple[str, int]] = []
    header: list[str] | None = None
    with open(path, encoding="utf-8", errors="replace") as fh:
        for n, line in enumerate(fh, start=1):
            if line.startswith("#") or not line.strip():
                continue
            parts = line.split()
            if header is None:
                header = parts
                if "PGCname" not in header or "T" not in header:
                    raise AstroclassError(f"{path}, line {n}: expected a header with PGCname and T, got {parts[:4]}")
                continue
            try:
                out.append((parts[header.index("PGCname")], int(float(parts[header.index("T")]))))
            except (IndexError, ValueError):
                raise AstroclassError(f"{path}, line {n}: cannot read PGCname and T from "
                                      f"{line.strip()[:60]!r}") from None
    if not out:
        raise AstroclassError(f"{path}: no galaxies in the EFIGI catalogue")
    return out


def efigi_view(catalog: Sequence[tuple[str, int]], view: str, min_count: int = 100) -> tuple[list[str], dict[str, str]]:
    """The paper's EF-2 / EF-4 / EF-15 class names and {PGC name: class} for a catalogue.

    EF-2: Elliptical (T -6..-4) vs Spiral (T 0..9). EF-4 adds Lenticular (T -3..-1) and
    Irregular (T 10). EF-15: one class per T value with more than ``min_count`` galaxies,
    named after its group (e.g. ``Spiral:3``). T = 11 (dwarfs) is in no view.
    """
    if view not in EFIGI_VIEWS:
        raise AstroclassError(f"unknown EFIGI view {view!r}; choose from {EFIGI_VIEWS}")

    def group(t: int) -> str | None:
        return next((g for g, r in _EFIGI_GROUPS.items() if t in r), None)

    if view == "EF-15":
        counts = Counter(t for _, t in catalog)
        kept = sorted(t for t, c in counts.items() if c > min_count and group(t) is not None)
        names = {t: f"{group(t)}:{t}" for t in kept}
        return [names[t] for t in kept], {pgc: names[t] for pgc, t in catalog if t in names}
    groups = ["Elliptical", "Spiral"] if view == "EF-2" else ["Elliptical", "Lenticular", "Spiral", "Irregular"]
    return groups, {pgc: g for pgc, t in catalog if (g := group(t)) in groups}


def efigi_items(catalog: str | Path, images: str | Path, view: str,
                workdir: str | Path | None = None) -> tuple[list[str], list[Item]]:
    """Items of an EFIGI view; ``images`` is a folder or a .tgz holding PGC*.png files."""
    classes, label_of = efigi_view(read_efigi_catalog(catalog), view)
    images = Path(images)
    if images.is_file() and tarfile.is_tarfile(images):
        if workdir is None:
            raise AstroclassError("extracting an EFIGI archive needs a working folder")
        with tarfile.open(images) as tar:
            members = [m for m in tar.getmembers() if m.isfile() and re.search(r"PGC\d+.*\.png$", m.name)]
            tar.extractall(workdir, members=members, filter="data")
        base = Path(workdir)
    elif images.is_dir():
        base = images
    else:
        raise AstroclassError(f"{images}: EFIGI images must be a folder or a .tgz archive of PGC*.png files")
    found = {p.stem: p for p in base.rglob("PGC*.png")}
    items = []
    for pgc, label in label_of.items():
        p = found.get(pgc)
        src = str(p) if p is not None else str(base / f"{pgc}.png")
        rel = p.relative_to(base).as_posix() if p is not None else f"{pgc}.png"
        items.append(Item(src, label, pgc, rel))
    return classes, items


# ---------------------------------------------------------------------------------------------
# Galaxy10

GALAXY10_DECALS_CLASSES = [
    "Disturbed", "Merging", "Round_Smooth", "In-between_Round_Smooth", "Cigar_Shaped_Smooth",
    "Barred_Spiral", "Unbarred_Tight_Spiral", "Unbarred_Loose_Spiral", "Edge-on_without_Bulge",
    "Edge-on_with_Bulge",
]
GALAXY10_SDSS_CLASSES = [
    "Disk_Face-on_No_Spiral", "Smooth_Completely_round", "Smooth_in-between_round", "Smooth_Cigar_shaped",
    "Disk_Edge-on_Rounded_Bulge", "Disk_Edge-on_Boxy_Bulge", "Disk_Edge-on_No_Bulge",
    "Disk_Face-on_Tight_Spiral", "Disk_Face-on_Medium_Spiral", "Disk_Face-on_Loose_Spiral",
]


def galaxy10_items(path: str | Path) -> tuple[list[str], list[Item], str]:
    """Items of an official Galaxy10 file (``images`` (N,H,W,3) uint8, ``ans`` (N,)).

    The layout is told by the image size: 256 px is Galaxy10 DECaLS, 69 px Galaxy10 SDSS.
    Returns (class names, items, layout name). Ids are 1-based row numbers, as ``h5_row`` in
    astroclass's own data README.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise AstroclassError(f"{path}: Galaxy10 file not found")
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in ("images", "ans") if k not in f]
            if missing:
                raise AstroclassError(f"{path}: not a Galaxy10 file, missing dataset(s) {missing}")
            shape, ans = f["images"].shape, f["ans"][()]
    except OSError as exc:
        raise AstroclassError(f"{path}: not a readable HDF5 file ({exc})") from None
    if len(shape) != 4 or shape[0] != len(ans):
        raise AstroclassError(f"{path}: 'images' has shape {shape}, expected (N, H, W, 3) with N = len(ans) = "
                              f"{len(ans)}")
    layout = "decals" if shape[1] >= 128 else "sdss"
    classes = GALAXY10_DECALS_CLASSES if layout == "decals" else GALAXY10_SDSS_CLASSES
    bad = sorted(set(int(a) for a in ans) - set(range(10)))
    if bad:
        raise AstroclassError(f"{path}: 'ans' holds values {bad[:5]} outside the 10 Galaxy10 classes 0..9")
    items = [Item(str(path), classes[int(a)], str(i + 1), f"{path.name}#{i + 1}", "images", i)
             for i, a in enumerate(ans)]
    return classes, items, layout


def sources_json(kind: str, path: str | Path, **extra) -> dict:
    return {"kind": kind, "path": str(path), **{k: v for k, v in extra.items() if v is not None}}


def import_efigi(catalog: str | Path, images: str | Path, view: str, output: str | Path, **kw) -> ImportReport:
    """The paper's EFIGI views (EF-2/EF-4/EF-15) as a prepared dataset."""
    with tempfile.TemporaryDirectory(prefix="astroclass-efigi-") as tmp:
        classes, items = efigi_items(catalog, images, view, workdir=tmp)
        return build_dataset(items, output, source=sources_json("efigi", images, catalog=str(catalog), view=view),
                             class_names=classes, **kw)


def import_folder(root: str | Path, output: str | Path, **kw) -> ImportReport:
    skipped: list = []
    items = folder_items(root, skip_bad=kw.get("skip_bad", False), skipped=skipped)
    return build_dataset(items, output, source=sources_json("folder", root), skipped=skipped, **kw)


def import_catalog(catalog: str | Path, output: str | Path, root: str | Path | None = None, path_col: str = "path",
                   label_col: str = "label", id_col: str | None = None, allow_outside: bool = False,
                   **kw) -> ImportReport:
    items = catalog_items(catalog, root, path_col, label_col, id_col, allow_outside)
    src = sources_json("catalog", catalog, root=str(root) if root else None, path_col=path_col, label_col=label_col)
    return build_dataset(items, output, source=src, **kw)


def import_galaxy10(path: str | Path, output: str | Path, **kw) -> ImportReport:
    classes, items, layout = galaxy10_items(path)
    return build_dataset(items, output, source=sources_json("galaxy10", path, layout=layout), class_names=classes, **kw)


def describe(report: ImportReport) -> str:
    """A short human summary of an import."""
    lines = [f"wrote {report.output} ({report.n_written} images, hash {report.content_hash[:12]})"]
    for s, counts in report.class_counts.items():
        lines.append(f"  {s:5s} " + ", ".join(f"{c}: {n}" for c, n in counts.items()))
    if report.skipped:
        lines.append(f"  skipped {len(report.skipped)} item(s), listed in {report.output.name}.skipped.csv")
    lines += [f"  warning: {w}" for w in report.warnings]
    return "\n".join(lines)


def report_json(report: ImportReport) -> str:
    return json.dumps({"output": str(report.output), "n_written": report.n_written,
                       "content_hash": report.content_hash, "class_counts": report.class_counts,
                       "skipped": report.skipped, "duplicates": report.duplicates,
                       "warnings": report.warnings}, indent=2)

