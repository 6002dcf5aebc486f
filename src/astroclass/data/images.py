"""Reading one image file into a (C, H, W) array at the target size.

8-bit sources (PNG, JPEG, TIFF, ...) are read with Pillow and stored as uint8. 16-bit greyscale PNG and
TIFF are scaled by their bit depth (value / 257, rounded) to uint8; 32-bit integer images whose values fit
16 bits are taken as 16-bit; floating-point images are refused (their scale is unknown: store them as FITS,
whose scaling is described below).

FITS sources are read with astropy. A FITS file may hold a 2-D image or a 3-D cube ordered
(bands, y, x), in the first HDU that carries image data. The bands are scaled to [0, 1] and stored as
float16 (the same scaling serves cut-outs from survey images, :mod:`astroclass.data.sky`):

1. non-finite pixels (NaN, +/-inf) are replaced by the median of the band's finite pixels
   (an image with a band that has no finite pixel at all is rejected);
2. with ``fits_magnitudes`` (pixels stored as surface-brightness magnitudes, as in some
   survey cutout sets), values are first converted to relative flux 10**(-0.4 m);
3. ``band_scaling="per-band"``: an interval maps each band to [0, 1] on its own (``percentile`` keeps the
   central ``fits_percentile`` per cent of the band's values, astropy ``PercentileInterval``; ``minmax``
   the full range; values outside are clipped), then a stretch is applied (astropy.visualization):
   ``linear``, ``sqrt``, ``log`` or ``asinh`` (``AsinhStretch(a=fits_asinh_a)``: near-linear for faint
   pixels, logarithmic for bright ones). Every band fills [0, 1], so the colour of an object is lost;
4. ``band_scaling="joint"`` keeps the colour (Lupton et al. 2004, as astropy's ``make_lupton_rgb`` does for
   three bands): each band's sky level (the interval's lower limit) is subtracted, the bands' mean is the
   intensity I, one scale maps I's upper limit to 1, the stretch is applied to I, and every band is
   multiplied by stretch(I)/I, so the ratios between bands are those of the sky; a pixel whose brightest
   band would pass 1 is scaled down as a whole (its colour kept), and negative values are clipped to 0.

Bands can be selected and re-ordered with ``bands`` (indices, or names listed in the FITS
header keyword ``BANDS``, e.g. ``"g,r,i"``).

Every image is resized to ``size`` x ``size`` with Lanczos resampling (antialiased when shrinking).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from astroclass.errors import BadImageError

FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz", ".fits.bz2", ".fit.bz2", ".fz")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp")
FITS_STRETCHES = ("asinh", "linear", "sqrt", "log")
FITS_INTERVALS = ("percentile", "minmax")
BAND_SCALINGS = ("per-band", "joint")


def is_fits(path: str | Path) -> bool:
    return str(path).lower().endswith(FITS_SUFFIXES)


def is_image_file(path: str | Path) -> bool:
    name = str(path).lower()
    return name.endswith(IMAGE_SUFFIXES) or name.endswith(FITS_SUFFIXES)


@dataclass(frozen=True)
class ImageSpec:
    """How source images become stored arrays. Saved in every prepared dataset and checkpoint."""

    size: int = 76
    channels: int = 3
    """Channels for 8-bit sources: 1 (grayscale) or 3 (RGB). FITS sources keep their bands."""
    bands: tuple[str, ...] | None = None
    """FITS band selection/order: indices ("0", "2") or names from the header keyword BANDS."""
    fits_interval: str = "percentile"
    fits_percentile: float = 99.5
    fits_stretch: str = "asinh"
    fits_asinh_a: float = 0.1
    fits_magnitudes: bool = False
    """FITS pixel values are magnitudes (smaller = brighter): converted to flux 10**(-0.4 m) first."""
    band_scaling: str = "per-band"
    """FITS bands: "per-band" (each band scaled on its own) or "joint" (together, colour kept)."""
    cutout_size: int | None = None
    """Cut-outs from survey images: the cut-out's side in pixels of the reference band, resampled to ``size``;
    None for images read from files."""
    reference_band: str | None = None
    """Cut-outs from survey images: the band whose pixel grid the cut-out follows (the others are aligned on
    the sky to it)."""
    pad_square: bool = False
    """An image that is not square is padded to a square with its median (each band's), centred; without this,
    it is refused: images are never stretched to a square."""

    def __post_init__(self) -> None:
        from astroclass.errors import AstroclassError

        if not 8 <= self.size <= 1024:
            raise AstroclassError(f"size must be between 8 and 1024 pixels, got {self.size}")
        if self.channels not in (1, 3):
            raise AstroclassError(f"channels must be 1 or 3 for 8-bit images, got {self.channels}")
        if self.fits_stretch not in FITS_STRETCHES:
            raise AstroclassError(f"fits_stretch must be one of {FITS_STRETCHES}, got {self.fits_stretch!r}")
        if self.fits_interval not in FITS_INTERVALS:
            raise AstroclassError(f"fits_interval must be one of {FITS_INTERVALS}, got {self.fits_interval!r}")
        if not 0 < self.fits_percentile <= 100:
            raise AstroclassError(f"fits_percentile must be in (0, 100], got {self.fits_percentile}")
        if self.band_scaling not in BAND_SCALINGS:
            raise AstroclassError(f"band_scaling must be one of {BAND_SCALINGS}, got {self.band_scaling!r}")
        if self.cutout_size is not None and not 8 <= self.cutout_size <= 4096:
            raise AstroclassError(f"cutout_size must be between 8 and 4096 pixels, got {self.cutout_size}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["bands"] = list(self.bands) if self.bands is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ImageSpec:
        d = dict(d)
        if d.get("bands") is not None:
            d["bands"] = tuple(str(b) for b in d["bands"])
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


@dataclass
class DecodedImage:
    array: np.ndarray  # (C, size, size), uint8 or float16
    band_names: tuple[str, ...] = field(default_factory=tuple)


def read_image(path: str | Path, spec: ImageSpec) -> DecodedImage:
    """Read one file (FITS or 8-bit image) into a (C, size, size) array; BadImageError on failure."""
    path = Path(path)
    if not path.is_file():
        raise BadImageError(f"{path}: file not found")
    if is_fits(path):
        return _read_fits(path, spec)
    return DecodedImage(_read_8bit(path, spec))


def array_to_stored(img: np.ndarray, spec: ImageSpec, where: str) -> np.ndarray:
    """An in-memory (H, W, C) uint8 image (e.g. from a Galaxy10 .h5) → stored (C, size, size) uint8."""
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.dtype != np.uint8:
        raise BadImageError(f"{where}: expected an (H, W, C) uint8 image, got shape {img.shape} {img.dtype}")
    mode = {1: "L", 3: "RGB", 4: "RGBA"}.get(img.shape[2])
    if mode is None:
        raise BadImageError(f"{where}: {img.shape[2]} channels is not an 8-bit image layout")
    pil = Image.fromarray(img[:, :, 0] if mode == "L" else img, mode=mode)
    return _pil_to_array(pil, spec, where)


def _read_8bit(path: Path, spec: ImageSpec) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im.load()
            return _pil_to_array(im, spec, str(path))
    except UnidentifiedImageError:
        raise BadImageError(f"{path}: not a readable image (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data
        raise BadImageError(f"{path}: unreadable image ({exc})") from None


def _pil_to_array(im: Image.Image, spec: ImageSpec, where: str) -> np.ndarray:
    if im.mode.startswith("I"):  # 16-bit ("I;16", "I;16B"...) or 32-bit integer greyscale
        a = np.asarray(im)
        if a.size and (int(a.min()) < 0 or int(a.max()) > 65535):
            raise BadImageError(f"{where}: 32-bit integer pixels beyond the 16-bit range ({int(a.min())} to "
                                f"{int(a.max())}); store such data as FITS")
        im = Image.fromarray(np.round(a.astype(np.float64) / 257).astype(np.uint8), mode="L")
    elif im.mode == "F":
        raise BadImageError(f"{where}: floating-point pixels, whose scale an image file does not say; store such "
                            f"data as FITS (astroclass then scales each band, see --stretch/--interval)")
    im = im.convert("L" if spec.channels == 1 else "RGB")
    if im.width != im.height:
        if not spec.pad_square:
            raise BadImageError(_not_square(where, im.width, im.height))
        side = max(im.size)
        median = tuple(int(v) for v in np.median(np.asarray(im).reshape(-1, len(im.getbands())), axis=0))
        square = Image.new(im.mode, (side, side), median[0] if im.mode == "L" else median)
        square.paste(im, ((side - im.width) // 2, (side - im.height) // 2))
        im = square
    if im.size != (spec.size, spec.size):
        im = im.resize((spec.size, spec.size), Image.Resampling.LANCZOS)
    arr = np.asarray(im, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr)


def _not_square(where: str, width: int, height: int) -> str:
    hint = (" (a survey image? 'astroclass data import sky' cuts objects out of it at a catalogue's positions)"
            if max(width, height) > 512 else "")
    return (f"{where}: {width}x{height} pixels, not square; astroclass does not stretch images to a square: cut "
            f"them square, or pass --pad-square to pad them with their median{hint}")


def pad_to_square(data: np.ndarray) -> np.ndarray:
    """(C, H, W) → (C, S, S), S = max(H, W), the image centred, each band padded with its finite median."""
    c, h, w = data.shape
    side = max(h, w)
    out = np.empty((c, side, side), dtype=data.dtype)
    for b in range(c):
        finite = data[b][np.isfinite(data[b])]
        out[b] = np.median(finite) if finite.size else np.nan
    y0, x0 = (side - h) // 2, (side - w) // 2
    out[:, y0:y0 + h, x0:x0 + w] = data
    return out


def _read_fits(path: Path, spec: ImageSpec) -> DecodedImage:
    from astropy.io import fits

    try:
        with fits.open(path, memmap=False) as hdul:
            hdu = next((h for h in hdul if getattr(h, "is_image", False) and h.data is not None
                        and h.data.ndim in (2, 3)), None)
            if hdu is None:
                raise BadImageError(f"{path}: no image HDU with 2-D or 3-D data")
            data = np.asarray(hdu.data, dtype=np.float64)
            header_bands = str(hdu.header.get("BANDS", "") or "")
    except BadImageError:
        raise
    except Exception as exc:  # astropy raises OSError, TypeError, ValueError for damaged files
        raise BadImageError(f"{path}: unreadable FITS file ({exc})") from None
    if data.ndim == 2:
        data = data[None]
    names = tuple(b.strip() for b in header_bands.replace(" ", ",").split(",") if b.strip())
    if len(names) != data.shape[0]:
        names = tuple(str(i) for i in range(data.shape[0]))
    if spec.bands:
        idx = [_band_index(b, names, path) for b in spec.bands]
        data = data[idx]
        names = tuple(names[i] for i in idx)
    if data.shape[1] != data.shape[2]:
        if not spec.pad_square:
            raise BadImageError(_not_square(str(path), data.shape[2], data.shape[1]))
        data = pad_to_square(data)
    scaled = scale_bands(data[None], spec, str(path), names)[0]
    out = np.stack([resize_band(b, spec.size) for b in scaled]).astype(np.float16)
    return DecodedImage(np.ascontiguousarray(out), names)


def _band_index(token: str, names: tuple[str, ...], path: Path) -> int:
    if token in names:
        return names.index(token)
    if token.lstrip("-").isdigit():
        i = int(token)
        if 0 <= i < len(names):
            return i
    raise BadImageError(f"{path}: band {token!r} not in this file's bands {list(names)}")


class _Asinh:
    """astropy's ``AsinhStretch(a)``, asinh(x / a) / asinh(1 / a), for x ≥ 0 computed as log(y + sqrt(y² + 1)):
    the same values (to float32 rounding), 3x faster than numpy's arcsinh, which is not vectorised. It is the
    cost that matters when a survey's cut-outs are scaled as fast as the model classifies them."""

    def __init__(self, a: float):
        self.a, self.norm = np.float32(a), np.float32(1 / np.arcsinh(1 / a))

    def __call__(self, values: np.ndarray, clip: bool = False, out: np.ndarray | None = None) -> np.ndarray:
        y = np.divide(values, self.a, out=out)
        t = np.square(y)
        t += 1
        np.sqrt(t, out=t)
        y += t
        np.log(y, out=y)
        y *= self.norm
        return np.clip(y, 0, 1, out=y) if clip else y


def _stretch(spec: ImageSpec):
    from astropy.visualization import LinearStretch, LogStretch, SqrtStretch

    return {"asinh": lambda: _Asinh(spec.fits_asinh_a), "linear": LinearStretch, "sqrt": SqrtStretch,
            "log": LogStretch}[spec.fits_stretch]()


def _limits(x: np.ndarray, spec: ImageSpec) -> tuple[np.ndarray, np.ndarray]:
    """The interval's (lower, upper) limits over the last axis: astropy's ``PercentileInterval`` (numpy's
    linear percentiles) or ``MinMaxInterval``, for many images at once."""
    if spec.fits_interval == "percentile":
        lower = (100 - spec.fits_percentile) * 0.5
        lo, hi = np.percentile(x, (lower, 100 - lower), axis=-1)
        return lo, hi
    return x.min(axis=-1), x.max(axis=-1)


def scale_bands(data: np.ndarray, spec: ImageSpec, where: str, names: tuple[str, ...],
                in_place: bool = False) -> np.ndarray:
    """(n, C, H, W) raw pixel values → float32 in [0, 1], by ``spec``'s scaling (see the module's docstring);
    each image is scaled on its own, in float32 (``in_place``: in ``data``'s own memory, when it is a
    contiguous float32 array). A band without any finite pixel is a :class:`BadImageError` naming ``where``
    and the band."""
    x = np.asarray(data, dtype=np.float32) if in_place else np.array(data, dtype=np.float32)
    n, c = x.shape[:2]
    flat = x.reshape(n, c, -1)
    finite = np.isfinite(flat)
    if not finite.all():
        for i, b in zip(*np.nonzero(~finite.all(axis=-1))):
            ok = finite[i, b]
            if not ok.any():
                raise BadImageError(f"{where}: band {names[b] if b < len(names) else b} has no finite pixel "
                                    f"(all NaN/inf)")
            flat[i, b][~ok] = np.median(flat[i, b][ok])
    if spec.fits_magnitudes:
        flat[:] = np.power(10.0, -0.4 * (flat - flat.min(axis=-1, keepdims=True)), dtype=np.float32)
    stretch = _stretch(spec)
    if spec.band_scaling == "per-band":
        lo, hi = _limits(flat, spec)
        span = hi - lo
        flat -= lo[..., None]
        flat /= np.where(span > 0, span, 1)[..., None]  # a constant band becomes 0
        np.clip(flat, 0.0, 1.0, out=flat)
        out = stretch(flat, clip=False, out=flat)
    else:  # joint: Lupton et al. (2004)
        lo, _ = _limits(flat, spec)
        flat -= lo[..., None]
        intensity = flat.mean(axis=1)  # (n, H*W)
        _, top = _limits(intensity, spec)
        scale = np.where(top > 0, top, 1).astype(np.float32)[:, None]
        np.clip(intensity / scale, 0.0, None, out=intensity)
        with np.errstate(invalid="ignore", divide="ignore"):
            gain = np.where(intensity > 0, stretch(intensity.copy(), clip=False) / intensity, 0).astype(np.float32)
        flat /= scale[:, None]
        flat *= gain[:, None]
        brightest = flat.max(axis=1, keepdims=True)
        flat /= np.where(brightest > 1, brightest, 1)
        out = np.clip(flat, 0.0, 1.0, out=flat)
    return out.reshape(x.shape)


def scale_band(band: np.ndarray, spec: ImageSpec, path: Path, name: str) -> np.ndarray:
    """One band (H, W) → float32 in [0, 1], scaled on its own (``band_scaling`` does not apply to one band)."""
    from dataclasses import replace

    return scale_bands(band[None, None], replace(spec, band_scaling="per-band"), str(path), (name,))[0, 0]


def resize_band(band: np.ndarray, size: int) -> np.ndarray:
    """One scaled band (H, W) → (size, size), Lanczos-resampled (antialiased when shrinking)."""
    if band.shape == (size, size):
        return band
    im = Image.fromarray(band.astype(np.float32), mode="F")
    return np.asarray(im.resize((size, size), Image.Resampling.LANCZOS), dtype=np.float32).clip(0.0, 1.0)
