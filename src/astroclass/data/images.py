"""Reading one image file into a (C, H, W) array at the target size.

8-bit sources (PNG, JPEG, TIFF, ...) are read with Pillow and stored as uint8. 16-bit greyscale PNG and
TIFF are scaled by their bit depth (value / 257, rounded) to uint8; 32-bit integer images whose values fit
16 bits are taken as 16-bit; floating-point images are refused (their scale is unknown: store them as FITS,
whose scaling is described below).

FITS sources are read with astropy. A FITS file may hold a 2-D image or a 3-D cube ordered
(bands, y, x), in the first HDU that carries image data. Each band is scaled independently to
[0, 1] and stored as float16:

1. non-finite pixels (NaN, +/-inf) are replaced by the median of the band's finite pixels
   (an image with a band that has no finite pixel at all is rejected);
2. an interval maps the band to [0, 1]: ``percentile`` keeps the central ``fits_percentile``
   per cent of the pixel values (astropy ``PercentileInterval``), ``minmax`` the full range;
   values outside are clipped;
0. with ``fits_magnitudes`` (pixels stored as surface-brightness magnitudes, as in some
   survey cutout sets), values are first converted to relative flux 10**(-0.4 m);
3. a stretch is applied (astropy.visualization): ``linear``, ``sqrt``, ``log`` or ``asinh``
   (``AsinhStretch(a=fits_asinh_a)``: near-linear for faint pixels, logarithmic for bright ones,
   the usual choice for survey cutouts).

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

FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fz")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp")
FITS_STRETCHES = ("asinh", "linear", "sqrt", "log")
FITS_INTERVALS = ("percentile", "minmax")


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
    if im.size != (spec.size, spec.size):
        im = im.resize((spec.size, spec.size), Image.Resampling.LANCZOS)
    arr = np.asarray(im, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr)


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
    bands = [scale_band(band, spec, path, names[i]) for i, band in enumerate(data)]
    out = np.stack([_resize_float(b, spec.size) for b in bands]).astype(np.float16)
    return DecodedImage(np.ascontiguousarray(out), names)


def _band_index(token: str, names: tuple[str, ...], path: Path) -> int:
    if token in names:
        return names.index(token)
    if token.lstrip("-").isdigit():
        i = int(token)
        if 0 <= i < len(names):
            return i
    raise BadImageError(f"{path}: band {token!r} not in this file's bands {list(names)}")


def scale_band(band: np.ndarray, spec: ImageSpec, path: Path, name: str) -> np.ndarray:
    from astropy.visualization import (
        AsinhStretch,
        LinearStretch,
        LogStretch,
        MinMaxInterval,
        PercentileInterval,
        SqrtStretch,
    )

    finite = np.isfinite(band)
    if not finite.any():
        raise BadImageError(f"{path}: band {name} has no finite pixel (all NaN/inf)")
    if not finite.all():
        band = np.where(finite, band, np.median(band[finite]))
    if spec.fits_magnitudes:
        band = np.power(10.0, -0.4 * (band - band.min()))
    interval = PercentileInterval(spec.fits_percentile) if spec.fits_interval == "percentile" else MinMaxInterval()
    stretch = {
        "asinh": lambda: AsinhStretch(a=spec.fits_asinh_a),
        "linear": LinearStretch,
        "sqrt": SqrtStretch,
        "log": LogStretch,
    }[spec.fits_stretch]()
    scaled = stretch(interval(band, clip=True), clip=True)
    return np.nan_to_num(scaled, nan=0.0).astype(np.float32)


def _resize_float(band: np.ndarray, size: int) -> np.ndarray:
    if band.shape == (size, size):
        return band
    im = Image.fromarray(band.astype(np.float32), mode="F")
    return np.asarray(im.resize((size, size), Image.Resampling.LANCZOS), dtype=np.float32).clip(0.0, 1.0)
