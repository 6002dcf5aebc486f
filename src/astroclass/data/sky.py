"""Cut-outs from survey images: a catalogue's positions on the sky → one (C, S, S) image per object.

Images are FITS files with a celestial WCS (plain, ``.gz``, ``.bz2`` or tile-compressed ``.fz``; the primary
HDU or an extension; 2-D, one band per file, or a cube of bands), grouped by band. Positions go through
``astropy.wcs.WCS.world_to_pixel`` with a :class:`~astropy.coordinates.SkyCoord`, so a WCS in any frame
(galactic, FK5, ICRS) and old plate solutions that astropy converts (DSS) work as they are.

**Which image.** For each band, an object is on an image when its pixel position lies within the image's
pixels; of several overlapping images the one where it lies farthest from an edge is taken. An object on no
image of some band is left out, with the reason.

**Alignment.** The cut-out follows the pixel grid of the reference band (the first band unless chosen): S x S
pixels of that band's image, centred exactly on the object's position (sub-pixel). Every band is sampled at
the same points of the sky: for each object, the local linear map from the reference band's pixels to the
band's pixels is taken from the two WCSs. Where that map is a translation (the same pixel scale and
orientation to within 0.05 px over the cut-out, as for the bands of one survey, each with its own WCS a few
pixels apart), the band is shifted by the sub-pixel offset with a separable Lanczos-3 kernel, the usual
resampling of survey images (SWarp's default): it leaves an image with integer offsets untouched and keeps
point sources' profiles sharper than bilinear or B-spline interpolation. Otherwise (another pixel scale or
orientation, e.g. bands from different surveys) the band is resampled on the reference grid by cubic
B-spline interpolation (``scipy.ndimage.map_coordinates``): a local reprojection. It interpolates, so a
band with pixels finer than the reference band's is subsampled without averaging; choose the band with the
coarsest pixels as the reference then.

**Edges and blank pixels.** Pixels of the cut-out that fall off the image, or on blank (non-finite) image
pixels, are filled with the median of the cut-out's real pixels (its local sky), and ``cutout_coverage``
records the fraction of the cut-out that comes from real pixels (the lowest over the bands). With
``edge="skip"`` an object whose cut-out reaches beyond the edge of one of its images is left out instead,
with the reason.

The cut-outs are then scaled (:func:`astroclass.data.images.scale_bands`: per band, or jointly to keep
colour) and resampled to the stored size, as FITS files are.
"""

from __future__ import annotations

import glob
import os
import re
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from astroclass.data.images import ImageSpec, resize_band, scale_bands
from astroclass.errors import AstroclassError, BadImageError

EDGE_POLICIES = ("pad", "skip")
LANCZOS_A = 3
TRANSLATION_TOLERANCE = 0.05
"""Pixels: a band's map from the reference grid is taken as a translation when treating it so moves no pixel
of the cut-out by more than this."""
PART_SIZE = 512
"""Objects cut out (and, when predicting, classified) together: a unit of work, of memory and of resuming."""
BAND_KEYWORDS = ("FILTER", "BAND", "FILTNAM", "FILTER1", "FILTNAME")
"""Header keywords that name the band of a 2-D image given with ``--images``."""
WAVELENGTH_ORDER = ("fuv", "nuv", "u", "g", "r", "i", "z", "y", "j", "h", "k", "ks", "w1", "w2", "w3", "w4")
"""Band names put in this order when no order is given (others follow in the order they were found)."""
_HDU_SELECTOR = re.compile(r"^(.+?\.(?:fits|fit|fts|fz)(?:\.gz|\.bz2|\.fz)?)\[([^\]]+)\]$", re.IGNORECASE)


@dataclass(frozen=True)
class SkyImage:
    """One band's image: a 2-D plane of a FITS file (``plane`` ≥ 0 for a cube's plane) with a celestial WCS."""

    path: str
    hdu: int
    plane: int
    band: str
    shape: tuple[int, int]  # (ny, nx)

    def label(self) -> str:
        return f"{self.path}[{self.hdu}]" + (f" plane {self.plane}" if self.plane >= 0 else "")

    def wcs(self) -> Any:
        """The celestial WCS (cached per process)."""
        return _wcs_of(self.path, self.hdu)


_WCS: dict[tuple, Any] = {}


@contextmanager
def quiet_astropy() -> Iterator[None]:
    """A context in which astropy's notes on the headers it fixes (FITSFixedWarning) are not printed."""
    from astropy.utils.exceptions import AstropyWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyWarning)
        yield


def _file_key(path: str) -> tuple[str, int, int]:
    """A file as a cache key: its path, size and modification time (a file rewritten is another file)."""
    st = os.stat(path)
    return path, st.st_size, st.st_mtime_ns


def _celestial(header: Any, where: str) -> Any:
    from astropy.wcs import WCS

    try:
        with quiet_astropy():
            w = WCS(header)
    except Exception as exc:
        raise AstroclassError(f"{where}: its WCS cannot be read ({type(exc).__name__}: {str(exc)[:160]})") from None
    if not w.has_celestial:
        raise AstroclassError(f"{where}: no celestial WCS in its header (CTYPE1/2 are "
                              f"{header.get('CTYPE1')!r}/{header.get('CTYPE2')!r}): positions cannot be placed on it")
    cel = w.celestial
    if {int(w.wcs.lng), int(w.wcs.lat)} != {0, 1}:
        raise AstroclassError(f"{where}: its celestial axes are not the image's first two (axes "
                              f"{w.wcs.lng + 1}, {w.wcs.lat + 1}), which astroclass cannot cut from")
    return cel


def _wcs_of(path: str, hdu: int) -> Any:
    key = (_file_key(path), hdu)
    if key not in _WCS:
        from astropy.io import fits

        with quiet_astropy(), fits.open(path) as hdul:
            _WCS[key] = _celestial(hdul[hdu].header, f"{path}[{hdu}]")
    return _WCS[key]


def _open_images(path: str, selector: str | None, band: str | None, where: str) -> list[SkyImage]:
    """The band images of one file: its chosen HDU (``selector``: number or EXTNAME; default the first with a
    2-D or 3-D image), one image if 2-D, one per plane if a cube."""
    from astropy.io import fits

    try:
        with quiet_astropy(), fits.open(path) as hdul:
            if selector is not None:
                key: int | str = int(selector) if selector.lstrip("-").isdigit() else selector
                try:
                    index = hdul.index_of(key)
                except (KeyError, IndexError):
                    raise AstroclassError(f"{path}: no HDU {selector!r} (it has {len(hdul)}: "
                                          f"{[h.name for h in hdul]})") from None
            else:
                index = next((i for i, h in enumerate(hdul) if getattr(h, "is_image", False)
                              and len(h.shape) in (2, 3) and all(h.shape)), -1)
                if index < 0:
                    raise AstroclassError(f"{path}: no 2-D image or cube in any HDU")
            hdu = hdul[index]
            shape = tuple(int(v) for v in hdu.shape)
            header = hdu.header
            if not getattr(hdu, "is_image", False) or len(shape) not in (2, 3):
                raise AstroclassError(f"{path}[{index}]: not a 2-D image or a cube (shape {shape})")
            _WCS[(_file_key(path), index)] = _celestial(header, f"{path}[{index}]")
            if len(shape) == 2:
                name = band or next((str(header[k]).strip() for k in BAND_KEYWORDS if str(header.get(k, "")).strip()),
                                    None)
                if name is None:
                    raise AstroclassError(f"{path}: its band is not in its header ({'/'.join(BAND_KEYWORDS)}): give "
                                          f"it with --band NAME={path}")
                return [SkyImage(path, index, -1, name, (shape[0], shape[1]))]
            if band is not None:
                raise AstroclassError(f"{where}: {path} is a cube of {shape[0]} planes; give cubes with --images "
                                      f"(its bands named by the header keyword BANDS), not as one band")
            names = [b for b in re.split(r"[,\s]+", str(header.get("BANDS", ""))) if b]
            if len(names) != shape[0]:
                names = [str(i) for i in range(shape[0])]
            return [SkyImage(path, index, p, names[p], shape[1:]) for p in range(shape[0])]  # type: ignore[arg-type]
    except AstroclassError:
        raise
    except Exception as exc:  # truncated, damaged, not FITS
        raise AstroclassError(f"{path}: not a readable FITS image ({type(exc).__name__}: "
                              f"{' '.join(str(exc).split())[:160]})") from None


def _expand(pattern: str, where: str) -> list[tuple[str, str | None]]:
    """(file, HDU selector) for every file a pattern matches: a glob, with an optional ``[HDU]`` after the file
    name (``frame-g.fits.fz[1]``, ``image.fits[SCI]``)."""
    selector = None
    m = _HDU_SELECTOR.match(pattern)
    if m and not Path(pattern).exists():
        pattern, selector = m.group(1), m.group(2)
    files = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else ([pattern] if Path(pattern).exists() else [])
    if not files:
        raise AstroclassError(f"{where}: no file matches {pattern!r}")
    return [(f, selector) for f in files if Path(f).is_file()] or [(files[0], selector)]


def find_images(bands: Mapping[str, Sequence[str]] | None = None, images: Sequence[str] = (),
                order: Sequence[str] | None = None) -> tuple[list[str], dict[str, list[SkyImage]]]:
    """The band images to cut from: ``bands`` maps a band name to file patterns (``--band g=frame-g-*.fits``);
    ``images`` are patterns of files whose band their header names (2-D: FILTER or BAND; a cube: BANDS). Returns
    (the band order: ``order`` if given, else by wavelength for the usual names, {band: its images})."""
    found: dict[str, list[SkyImage]] = {}
    for name, patterns in (bands or {}).items():
        if not name or not re.fullmatch(r"[\w.+-]+", name):
            raise AstroclassError(f"--band {name}=...: a band name is letters, digits, '_', '.', '+' or '-'")
        for pattern in patterns:
            for path, selector in _expand(pattern, f"--band {name}"):
                found.setdefault(name, []).extend(_open_images(path, selector, name, f"--band {name}"))
    for pattern in images:
        for path, selector in _expand(pattern, "--images"):
            for im in _open_images(path, selector, None, "--images"):
                found.setdefault(im.band, []).append(im)
    if not found:
        raise AstroclassError("no survey images given: name them per band (--band g='frame-g-*.fits') or with "
                              "--images (bands from their headers)")
    for name, ims in found.items():
        seen = set()
        for im in ims:
            if (im.path, im.hdu, im.plane) in seen:
                raise AstroclassError(f"band {name}: {im.label()} is given twice")
            seen.add((im.path, im.hdu, im.plane))
    if order:
        missing = [b for b in order if b not in found]
        if missing:
            raise AstroclassError(f"band(s) {missing} have no image; the images given have bands {sorted(found)}")
        return list(order), {b: found[b] for b in order}
    rank = {b: i for i, b in enumerate(WAVELENGTH_ORDER)}
    names = sorted(found, key=lambda b: (rank.get(b.lower(), len(rank)), list(found).index(b)))
    return names, found


# ---------------------------------------------------------------------------------------------
# which image, and where on it


@dataclass
class CutoutPlan:
    """Where each object is cut from: per band, the image (index into ``images[band]``, -1: none) and the
    object's pixel position there, the local map from reference-band pixels to the band's pixels, and the
    reason for every object that cannot be cut out (0-based position index → text)."""

    bands: list[str]
    reference: str
    images: dict[str, list[SkyImage]]
    image_of: dict[str, np.ndarray]
    xy: dict[str, np.ndarray]
    jacobian: dict[str, np.ndarray]
    margin: dict[str, np.ndarray]  # per band: the pixels from the object to the nearest edge of its image
    reasons: dict[int, str] = field(default_factory=dict)

    def usable(self) -> np.ndarray:
        n = len(self.image_of[self.reference])
        return np.array([i for i in range(n) if i not in self.reasons], dtype=np.int64)

    def partial(self, size: int) -> dict[int, str]:
        """The objects whose cut-out of ``size`` reference pixels reaches beyond an edge of one of its images,
        with the reason."""
        out: dict[int, str] = {}
        half = (size - 1) / 2 + 0.5
        for b in self.bands:
            reach = half * np.abs(self.jacobian[b]).sum(axis=2).max(axis=1)  # the cut-out's half-width there
            for i in np.flatnonzero((self.image_of[b] >= 0) & (self.margin[b] < reach)):
                if int(i) not in self.reasons and int(i) not in out:
                    im = self.images[b][self.image_of[b][i]]
                    out[int(i)] = (f"partial cut-out: reaches {reach[i] - self.margin[b][i]:.0f} px beyond the edge "
                                   f"of {im.label()} (--edge pad keeps it, padded)")
        return out


def _footprint_candidates(coords: Any, im: SkyImage) -> np.ndarray:
    """Indices of the positions that may lie on ``im``: within the circle through its corners (a cheap cut
    before the exact test, so that a catalogue of the whole sky costs little per image)."""
    ny, nx = im.shape
    w = im.wcs()
    with quiet_astropy():
        corners = w.pixel_to_world([-0.5, nx - 0.5, nx - 0.5, -0.5, (nx - 1) / 2],
                                   [-0.5, -0.5, ny - 0.5, ny - 0.5, (ny - 1) / 2])
    centre = corners[4]
    radius = max(centre.separation(corners[i]).deg for i in range(4))
    sep = coords.separation(centre).deg
    return np.flatnonzero(np.nan_to_num(sep, nan=np.inf) <= radius * 1.05 + 1e-6)


def plan_cutouts(coords: Any, bands: Sequence[str], images: Mapping[str, Sequence[SkyImage]],
                 reference: str | None = None) -> CutoutPlan:
    """For each band the image each position lies on (farthest from an edge when on several) and its pixel
    position there; for each band but the reference, the local map from reference pixels to its pixels."""
    reference = reference or bands[0]
    if reference not in bands:
        raise AstroclassError(f"reference band {reference!r} is not among the bands {list(bands)}")
    n = len(coords)
    image_of, xy, jac, margins = {}, {}, {}, {}
    reasons: dict[int, str] = {}
    for b in bands:
        best = np.full(n, -np.inf)
        chosen = np.full(n, -1, dtype=np.int64)
        pos = np.full((n, 2), np.nan)
        for k, im in enumerate(images[b]):
            cand = _footprint_candidates(coords, im)
            if not len(cand):
                continue
            with quiet_astropy():
                x, y = im.wcs().world_to_pixel(coords[cand])
            x, y = np.atleast_1d(np.asarray(x, float)), np.atleast_1d(np.asarray(y, float))
            ny, nx = im.shape
            margin = np.minimum.reduce([x + 0.5, nx - 0.5 - x, y + 0.5, ny - 0.5 - y])
            margin = np.where(np.isfinite(margin), margin, -np.inf)
            better = (margin >= 0) & (margin > best[cand])
            idx = cand[better]
            best[idx], chosen[idx] = margin[better], k
            pos[idx, 0], pos[idx, 1] = x[better], y[better]
        image_of[b], xy[b], margins[b] = chosen, pos, best
        for i in np.flatnonzero(chosen < 0):
            files = len(images[b])
            reasons.setdefault(int(i), f"on no {b} image ({files} file{'s' if files > 1 else ''} searched)")
    # the local map from the reference grid to each band's grid
    ok = np.flatnonzero(np.all([image_of[b] >= 0 for b in bands], axis=0))
    eye = np.broadcast_to(np.eye(2), (n, 2, 2)).copy()
    for b in bands:
        jac[b] = eye.copy()
    ref_images = images[reference]
    for k, rim in enumerate(ref_images):
        sel = ok[image_of[reference][ok] == k]
        if not len(sel):
            continue
        rx, ry = xy[reference][sel, 0], xy[reference][sel, 1]
        with quiet_astropy():
            step_x = rim.wcs().pixel_to_world(rx + 1, ry)
            step_y = rim.wcs().pixel_to_world(rx, ry + 1)
        for b in bands:
            if b == reference:
                continue
            for m, im in enumerate(images[b]):
                sub = np.flatnonzero(image_of[b][sel] == m)
                if not len(sub):
                    continue
                rows = sel[sub]
                with quiet_astropy():
                    x1, y1 = im.wcs().world_to_pixel(step_x[sub])
                    x2, y2 = im.wcs().world_to_pixel(step_y[sub])
                bx, by = xy[b][rows, 0], xy[b][rows, 1]
                jac[b][rows] = np.stack([np.stack([x1 - bx, x2 - bx], -1), np.stack([y1 - by, y2 - by], -1)], 1)
    return CutoutPlan(list(bands), reference, {b: list(images[b]) for b in bands}, image_of, xy, jac, margins,
                      reasons)


# ---------------------------------------------------------------------------------------------
# parts: objects cut out together, from the same images


@dataclass
class SkyPart:
    """Objects cut from the same images (one per band): what a worker needs, and nothing else."""

    index: int
    rows: np.ndarray  # the objects' rows in the caller's table
    images: tuple[SkyImage, ...]  # per band, in band order
    xy: np.ndarray  # (n, bands, 2) pixel positions
    jacobian: np.ndarray  # (n, bands, 2, 2)
    spec: dict  # the ImageSpec


def sky_parts(plan: CutoutPlan, objects: np.ndarray, rows: np.ndarray, spec: ImageSpec,
              part_size: int = PART_SIZE) -> list[SkyPart]:
    """The plan's usable objects ``objects`` (position indices; their table rows ``rows``) in parts of at most
    ``part_size``, each from one image per band, in the order of their first object."""
    groups: OrderedDict[tuple[int, ...], list[int]] = OrderedDict()
    for j, i in enumerate(objects):
        groups.setdefault(tuple(int(plan.image_of[b][i]) for b in plan.bands), []).append(j)
    parts: list[SkyPart] = []
    for key, members in groups.items():
        for s in range(0, len(members), part_size):
            js = np.array(members[s:s + part_size])
            obj = objects[js]
            parts.append(SkyPart(
                len(parts), rows[js], tuple(plan.images[b][k] for b, k in zip(plan.bands, key)),
                np.stack([plan.xy[b][obj] for b in plan.bands], 1),
                np.stack([plan.jacobian[b][obj] for b in plan.bands], 1), spec.to_dict()))
    return parts


_DATA: OrderedDict[tuple, np.ndarray] = OrderedDict()
_DATA_KEEP = 8


def _image_data(im: SkyImage) -> np.ndarray:
    """The image's pixels as float32 (scaled by BSCALE/BZERO); the last few read are kept, so that the parts
    of one image read it once."""
    from astropy.io import fits

    try:
        key = (_file_key(im.path), im.hdu, im.plane)
    except OSError as exc:
        raise BadImageError(f"{im.label()}: cannot be read ({exc.strerror})") from None
    if key in _DATA:
        _DATA.move_to_end(key)
        return _DATA[key]
    try:
        with quiet_astropy(), fits.open(im.path, memmap=False) as hdul:  # "may have been truncated": said below
            data = hdul[im.hdu].data
            plane = np.asarray(data[im.plane] if im.plane >= 0 else data, dtype=np.float32)
    except Exception as exc:
        raise BadImageError(f"{im.label()}: unreadable FITS data ({type(exc).__name__}: "
                            f"{' '.join(str(exc).split())[:160]})") from None
    if plane.shape != im.shape:
        raise BadImageError(f"{im.label()}: data of shape {plane.shape}, its header says {im.shape}")
    _DATA[key] = plane
    while len(_DATA) > _DATA_KEEP:
        _DATA.popitem(last=False)
    return plane


def _window(data: np.ndarray, x0: int, y0: int, w: int, h: int) -> np.ndarray:
    """data[y0:y0+h, x0:x0+w] (float32), NaN where it lies off the image."""
    ny, nx = data.shape
    if x0 >= 0 and y0 >= 0 and x0 + w <= nx and y0 + h <= ny:
        return data[y0:y0 + h, x0:x0 + w]
    out = np.full((h, w), np.nan, np.float32)
    xa, xb, ya, yb = max(x0, 0), min(x0 + w, nx), max(y0, 0), min(y0 + h, ny)
    if xa < xb and ya < yb:
        out[ya - y0:yb - y0, xa - x0:xb - x0] = data[ya:yb, xa:xb]
    return out


def _filled(win: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(the window with off-image and blank pixels set to the median of its real ones, which are real), or None
    when none is."""
    valid = np.isfinite(win)
    if not valid.any():
        return None
    if not valid.all():
        win = np.where(valid, win, np.median(win[valid]))
    return win, valid


def _lanczos(t: np.ndarray) -> np.ndarray:
    """Lanczos-3 weights (n, 6) for taps at offsets -2..3 from the sample's floor, at fractions ``t`` (n,),
    normalised to sum 1 (a flat image stays flat)."""
    d = t[:, None] - np.arange(-LANCZOS_A + 1, LANCZOS_A + 1)[None, :]
    w = np.sinc(d) * np.sinc(d / LANCZOS_A)
    return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def _shift_cut(data: np.ndarray, xy: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Cut-outs (n, S, S) centred on ``xy`` (n, 2) by a sub-pixel Lanczos-3 shift, the fraction of each that
    comes from real pixels, and per object an error ('' if none)."""
    a, c, n = LANCZOS_A, (size - 1) / 2, len(xy)
    span = size + 2 * a - 1
    sx, sy = xy[:, 0] - c, xy[:, 1] - c  # the first sample's coordinate
    fx, fy = np.floor(sx).astype(np.int64), np.floor(sy).astype(np.int64)
    tx, ty = sx - fx, sy - fy
    wx, wy = _lanczos(tx), _lanczos(ty)
    out = np.zeros((n, size, size), np.float32)
    cover = np.zeros(n)
    errors = [""] * n
    wins = np.empty((n, span, span), np.float32)
    for k in range(n):
        got = _filled(_window(data, int(fx[k]) - a + 1, int(fy[k]) - a + 1, span, span))
        if got is None:
            errors[k] = "no real pixel within the cut-out"
            wins[k] = 0.0
            continue
        wins[k], valid = got
        rx, ry = int(round(tx[k])), int(round(ty[k]))  # each sample's nearest pixel
        cover[k] = valid[a - 1 + ry:a - 1 + ry + size, a - 1 + rx:a - 1 + rx + size].mean()
    along_x = wx[:, 0, None, None] * wins[:, :, 0:size]
    for j in range(1, 2 * a):
        along_x += wx[:, j, None, None] * wins[:, :, j:j + size]
    for j in range(2 * a):
        out += wy[:, j, None, None] * along_x[:, j:j + size, :]
    return out, cover, errors


def _map_cut(data: np.ndarray, xy: np.ndarray, jac: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Cut-outs (n, S, S) on the reference grid: sample (i, j) at xy + J @ (j - c, i - c), by cubic B-spline
    interpolation; with the fraction from real pixels and per object an error ('' if none)."""
    from scipy import ndimage

    c, n = (size - 1) / 2, len(xy)
    grid = np.arange(size) - c
    gx, gy = np.meshgrid(grid, grid)  # gx[i, j] = j - c, gy[i, j] = i - c
    out = np.zeros((n, size, size))
    cover = np.zeros(n)
    errors = [""] * n
    for k in range(n):
        J = jac[k]
        px = xy[k, 0] + J[0, 0] * gx + J[0, 1] * gy
        py = xy[k, 1] + J[1, 0] * gx + J[1, 1] * gy
        x0, y0 = int(np.floor(px.min())) - 3, int(np.floor(py.min())) - 3
        w, h = int(np.ceil(px.max())) + 4 - x0, int(np.ceil(py.max())) + 4 - y0
        got = _filled(_window(data, x0, y0, w, h))
        if got is None:
            errors[k] = "no real pixel within the cut-out"
            continue
        win, valid = got
        out[k] = ndimage.map_coordinates(win, [py - y0, px - x0], order=3, mode="nearest")
        ix = np.clip(np.rint(px - x0).astype(np.int64), 0, w - 1)
        iy = np.clip(np.rint(py - y0).astype(np.int64), 0, h - 1)
        cover[k] = valid[iy, ix].mean()
    return out, cover, errors


def cut_part(part: SkyPart) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A part's cut-outs, scaled and resampled as its spec says: (n, C, size, size) float16 (zeros where an
    object failed), each object's ``cutout_coverage``, and per object an error ('' if none)."""
    spec = ImageSpec.from_dict(part.spec)
    n, nb = len(part.rows), len(part.images)
    size = spec.cutout_size or spec.size
    raw = np.zeros((n, nb, size, size), np.float32)
    cover = np.ones(n)
    errors = [""] * n
    eye = np.eye(2)
    try:
        for b, im in enumerate(part.images):
            data = _image_data(im)
            jac = part.jacobian[:, b]
            shift = np.abs(jac - eye).max(axis=(1, 2)) * (size - 1) / 2 <= TRANSLATION_TOLERANCE
            for sel, cut in ((np.flatnonzero(shift), None), (np.flatnonzero(~shift), "map")):
                if not len(sel):
                    continue
                values, cov, errs = _shift_cut(data, part.xy[sel, b], size) if cut is None else \
                    _map_cut(data, part.xy[sel, b], jac[sel], size)
                raw[sel, b] = values
                cover[sel] = np.minimum(cover[sel], cov)
                for k, e in zip(sel, errs):
                    if e and not errors[k]:
                        errors[k] = f"{im.label()}: {e}"
    except BadImageError as exc:
        return np.zeros((n, nb, spec.size, spec.size), np.float16), np.zeros(n), [str(exc)] * n
    out = np.zeros((n, nb, spec.size, spec.size), np.float16)
    good = np.array([not e for e in errors])
    if good.any():
        names = tuple(im.band for im in part.images)
        try:
            scaled = scale_bands(raw if good.all() else raw[good], spec, part.images[0].label(), names,
                                 in_place=True)
        except BadImageError as exc:  # cannot happen after filling, but a bad row must not fail the rest
            return out, cover, [str(exc)] * n
        if size != spec.size:
            scaled = np.stack([[resize_band(band, spec.size) for band in img] for img in scaled])
        out[good] = scaled.astype(np.float16)
    return out, cover, errors


def iter_cutouts(parts: Sequence[SkyPart], workers: int | None = None) -> Iterator[tuple[SkyPart, tuple]]:
    """(part, :func:`cut_part` of it) for each part, in order, the parts cut in ``workers`` processes."""
    from astroclass.parallel import parallel_imap

    yield from zip(parts, parallel_imap(cut_part, list(parts), (), workers, chunk=1, ahead=2))


# ---------------------------------------------------------------------------------------------
# a catalogue on survey images


@dataclass
class SkyCatalog:
    """A catalogue laid on survey images: its table, its rows' positions, and the cut-out plan of the usable
    ones; ``reasons`` gives, per table row (0-based), why it cannot be cut out."""

    path: Path
    table: Any
    positions: Any  # astroclass.catalogs.Positions
    plan: CutoutPlan
    reasons: dict[int, str]

    def usable_rows(self) -> np.ndarray:
        """Table rows that can be cut out, in catalogue order."""
        return np.array([r for r in self.positions.rows.tolist() if r not in self.reasons], dtype=np.int64)

    def parts(self, spec: ImageSpec, rows: np.ndarray | None = None, out_rows: np.ndarray | None = None,
              part_size: int = PART_SIZE) -> list[SkyPart]:
        """Parts of the table rows ``rows`` (default: every usable row), each object named in its part by its
        ``out_rows`` entry (default: its table row)."""
        rows = self.usable_rows() if rows is None else rows
        index_of = {int(r): i for i, r in enumerate(self.positions.rows)}
        objects = np.array([index_of[int(r)] for r in rows], dtype=np.int64)
        return sky_parts(self.plan, objects, rows if out_rows is None else out_rows, spec, part_size)

    def provenance(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Per usable row: each band's image file, HDU and the object's 0-based pixel position there."""
        index_of = {int(r): i for i, r in enumerate(self.positions.rows)}
        obj = np.array([index_of[int(r)] for r in rows], dtype=np.int64)
        out: dict[str, np.ndarray] = {}
        for b in self.plan.bands:
            ims = self.plan.images[b]
            k = self.plan.image_of[b][obj]
            out[f"cutout_file_{b}"] = np.array([ims[i].path for i in k], dtype=object)
            out[f"cutout_hdu_{b}"] = np.array([ims[i].hdu for i in k], dtype=np.int64)
            out[f"cutout_x_{b}"] = self.plan.xy[b][obj, 0]
            out[f"cutout_y_{b}"] = self.plan.xy[b][obj, 1]
        return out


def lay_catalog(catalog: str | Path, bands: Mapping[str, Sequence[str]] | None = None, images: Sequence[str] = (),
                band_order: Sequence[str] | None = None, ra_col: str | None = None, dec_col: str | None = None,
                frame: str | None = None, reference: str | None = None, cutout_size: int = 76,
                edge: str = "pad") -> SkyCatalog:
    """Read a catalogue and its band images, and find where each row is cut from: rows with unusable positions,
    on no image of some band, or (``edge="skip"``) whose cut-out of ``cutout_size`` reference pixels would reach
    beyond an image's edge get their reason."""
    from astroclass.catalogs import read_catalog, sky_positions

    if edge not in EDGE_POLICIES:
        raise AstroclassError(f"edge must be one of {EDGE_POLICIES}, got {edge!r}")
    path = Path(catalog)
    table = read_catalog(path)
    positions = sky_positions(table, str(path), ra_col, dec_col, frame)
    order, found = find_images(bands, images, band_order)
    plan = plan_cutouts(positions.coords, order, found, reference)
    reasons = dict(positions.bad)
    partial = plan.partial(cutout_size) if edge == "skip" else {}
    for i, r in enumerate(positions.rows.tolist()):
        why = plan.reasons.get(i) or partial.get(i)
        if why:
            reasons[r] = why
    return SkyCatalog(path, table, positions, plan, reasons)


def import_sky(catalog: str | Path, output: str | Path, *, bands: Mapping[str, Sequence[str]] | None = None,
               images: Sequence[str] = (), band_order: Sequence[str] | None = None, ra_col: str | None = None,
               dec_col: str | None = None, frame: str | None = None, label_col: str | None = None,
               id_col: str | None = None, cutout_size: int | None = None, reference_band: str | None = None,
               edge: str = "pad", spec: ImageSpec | None = None, workers: int | None = None,
               skip_bad: bool = False, show_progress: bool = True, **kw: Any) -> Any:
    """Cut every catalogue object out of survey images into a prepared dataset: labelled from ``label_col``
    (default: a column named ``label`` when there is one), else unlabelled (objects to classify). Every
    catalogue column is kept per object (``/columns``), with ``catalog_row`` (1-based), the image file, HDU and
    pixel position of each band, and ``cutout_coverage``. Rows whose position is unusable are an error naming
    the row unless ``skip_bad``; rows on no image of a band, or partial with ``edge="skip"``, are left out and
    listed in ``OUTPUT.skipped.csv``. Returns the :class:`~astroclass.data.importers.ImportReport`."""
    from dataclasses import replace

    from astroclass.catalogs import column_error, row_name, storable_columns, text_column
    from astroclass.data.importers import Item, build_dataset, pixel_digest, sources_json

    spec = spec or ImageSpec()
    size = cutout_size or spec.size
    sky = lay_catalog(catalog, bands, images, band_order, ra_col, dec_col, frame, reference_band, size, edge)
    where, table = str(sky.path), sky.table
    spec = replace(spec, bands=tuple(sky.plan.bands), cutout_size=size, reference_band=sky.plan.reference)
    cols = list(table.colnames)
    if label_col is not None and label_col not in cols:
        raise column_error(where, "label", label_col, cols, "--label-col")
    if label_col is None and "label" in cols:
        label_col = "label"
    if id_col is not None and id_col not in cols:
        raise column_error(where, "id", id_col, cols, "--id-col")
    labels = text_column(table, label_col) if label_col else [""] * len(table)
    ids = text_column(table, id_col) if id_col else [str(i + 1) for i in range(len(table))]
    bad = {r: why for r, why in sky.positions.bad.items()}
    if label_col:
        for r, lab in enumerate(labels):
            if not lab:
                bad.setdefault(r, f"empty {label_col!r}")
    if bad and not skip_bad:
        r = min(bad)
        more = f" (and {len(bad) - 1} more such row(s))" if len(bad) > 1 else ""
        raise AstroclassError(f"{row_name(where, r)}: {bad[r]}{more}; fix the catalogue, or pass --skip-bad to leave "
                              f"such rows out")
    skipped = [(row_name(where, r), why) for r, why in sorted({**sky.reasons, **bad}.items())]
    rows = np.array([r for r in sky.usable_rows().tolist() if r not in bad], dtype=np.int64)
    if not len(rows):
        first = skipped[0] if skipped else ("", "")
        raise AstroclassError(f"{where}: none of its {len(table)} objects can be cut out of the images given (e.g. "
                              f"{first[0]}: {first[1]})")
    items = [Item(str(sky.path), labels[r], ids[r] or str(r + 1), f"{sky.path.name}#{r + 1}") for r in rows]
    columns = storable_columns(table)
    provenance = {"catalog_row": rows + 1, **sky.provenance(rows), "cutout_coverage": np.full(len(rows), np.nan)}
    clash = sorted(set(columns) & set(provenance))
    if clash:
        raise AstroclassError(f"{where}: the catalogue has column(s) {clash}, which astroclass writes itself: "
                              f"rename them")
    bad_names = [c for c in columns if "/" in c or c == "."]
    if bad_names:
        raise AstroclassError(f"{where}: column name(s) {bad_names} cannot be stored (a '/' in a name): rename them")
    columns = {k: v[rows] for k, v in columns.items()}
    columns.update(provenance)
    coverage = columns["cutout_coverage"]  # filled as the objects are cut out, before it is written
    parts = sky.parts(spec, rows, out_rows=np.arange(len(rows)))

    def decoded() -> Iterator[tuple[int, np.ndarray | None, tuple[str, ...], str, str]]:
        for part, (arrays, cover, errors) in iter_cutouts(parts, workers):
            for k, j in enumerate(part.rows.tolist()):
                coverage[j] = cover[k]
                if errors[k]:
                    yield j, None, (), f"{row_name(where, int(rows[j]))}: {errors[k]}", ""
                else:
                    yield j, arrays[k], tuple(sky.plan.bands), "", pixel_digest(arrays[k])

    class_names = sorted({labels[r] for r in rows}) if label_col else []
    source = sources_json("sky", sky.path, bands={b: sorted({im.path for im in sky.plan.images[b]})
                                                  for b in sky.plan.bands},
                          coordinates=list(sky.positions.columns), frame=sky.positions.frame,
                          label_col=label_col, id_col=id_col, edge=edge)
    return build_dataset(items, output, spec, source=source, class_names=class_names, columns=columns,
                         skipped=skipped, decoded=decoded(), skip_bad=skip_bad, show_progress=show_progress,
                         workers=workers, **kw)
