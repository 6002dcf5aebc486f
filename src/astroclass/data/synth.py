"""The synthetic sky: labelled multi-band cutouts rendered with GalSim, with their true parameters.

Tasks:

* ``sg``: stars (a Moffat PSF, β = 3, FWHM = seeing × U(0.85, 1.15)) vs galaxies (Sérsic profiles
  with random index, half-light radius, axis ratio and orientation, convolved with the same
  PSF), over a magnitude range wide enough that faint, small galaxies look like stars.
* ``mg``: merging pairs (two overlapping galaxies, each tidally sheared along the line joining
  them, with a faint tidal tail) vs isolated galaxies (sometimes with an unrelated field star or
  galaxy in the stamp).
* ``morph``: elliptical (de Vaucouleurs), lenticular (bulge + disk), spiral (bulge + disk with
  logarithmic arms), irregular (clumps on a faint disk); ``barred_spiral`` and ``edge_on`` on
  request (``classes``).

Photometry: magnitudes in r with per-class colours (g−r, r−i); counts = 10^(−0.4 (m − zp)); the
sky (surface brightness ``sky_mag`` mag/arcsec²) adds Poisson noise and is subtracted, and CCD
read noise is added (GalSim ``CCDNoise``). Each band is then mapped to [0, 1] with one asinh
stretch shared by all objects, asinh(x / 3σ) / asinh(peak / 3σ), where σ is the sky + read noise
per pixel and ``peak`` the central pixel of a point source at the bright end of the magnitude
range, so brightness differences between objects survive (a per-image stretch would erase
them); negative pixels are clipped to 0. Images are stored as float16 in a prepared dataset, with per-object
columns of the true parameters, including the
r-band signal-to-noise ratio (the optimal, matched-filter S/N of the noiseless profile).

Every object's parameters and noise come from its own seeds derived from ``seed``, so the same
seed gives the same bytes whatever the number of worker processes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from astroclass.errors import AstroclassError

TASKS = {
    "sg": ["star", "galaxy"],
    "mg": ["isolated", "merger"],
    "morph": ["elliptical", "lenticular", "spiral", "irregular"],
}
EXTRA_MORPH = ["barred_spiral", "edge_on"]
COLOURS = {  # (g−r range, r−i range)
    "star": ((0.2, 1.4), (0.0, 0.6)), "galaxy": ((0.3, 1.0), (0.2, 0.5)),
    "isolated": ((0.3, 1.0), (0.2, 0.5)), "merger": ((0.3, 0.9), (0.2, 0.5)),
    "elliptical": ((0.75, 1.0), (0.35, 0.5)), "lenticular": ((0.65, 0.9), (0.3, 0.45)),
    "spiral": ((0.4, 0.75), (0.2, 0.4)), "barred_spiral": ((0.45, 0.8), (0.2, 0.4)),
    "edge_on": ((0.5, 0.9), (0.25, 0.45)), "irregular": ((0.1, 0.45), (0.05, 0.3)),
}
DEFAULT_MAGS = {"sg": (16.5, 22.5), "mg": (15.0, 18.5), "morph": (13.5, 17.0)}
BAND_PSF_SCALE = {"u": 1.15, "g": 1.08, "r": 1.0, "i": 0.95, "z": 0.92}
BAND_OFFSET = {"u": lambda gr, ri: 1.5 * gr, "g": lambda gr, ri: gr, "r": lambda gr, ri: 0.0,
               "i": lambda gr, ri: -ri, "z": lambda gr, ri: -1.6 * ri}


@dataclass
class SynthConfig:
    """Options of the synthetic sky; validated before anything is rendered."""

    task: str = "sg"
    n: int = 1000
    seed: int = 0
    size: int = 76
    bands: tuple[str, ...] = ("g", "r", "i")
    pixel_scale: float = 0.396
    """arcsec per pixel (SDSS)."""
    seeing: float = 1.4
    """PSF FWHM in arcsec (r band)."""
    mag_min: float | None = None
    mag_max: float | None = None
    """r magnitude range (default per task: sg 16.5–22.5, mg 15–18.5, morph 13.5–17)."""
    sky_mag: float = 20.9
    """Sky surface brightness, mag/arcsec² (r band)."""
    zero_point: float = 28.0
    read_noise: float = 5.0
    """electrons per pixel."""
    classes: tuple[str, ...] | None = None
    """For morph: which classes (default: elliptical, lenticular, spiral, irregular)."""
    star_fraction: float = 0.5
    """For sg: fraction of stars (mg: fraction of mergers; morph: classes are balanced)."""
    extra: dict = field(default_factory=dict)

    def mag_range(self) -> tuple[float, float]:
        lo, hi = DEFAULT_MAGS[self.task]
        return (lo if self.mag_min is None else self.mag_min, hi if self.mag_max is None else self.mag_max)

    def class_names(self) -> list[str]:
        if self.task == "morph" and self.classes:
            return list(self.classes)
        return list(TASKS[self.task])

    def validate(self) -> SynthConfig:
        if self.task not in TASKS:
            raise AstroclassError(f"unknown synthetic task {self.task!r}; choose from {sorted(TASKS)}")
        if self.n <= 0:
            raise AstroclassError(f"n must be a positive number of objects, got {self.n}")
        if not 32 <= self.size <= 512:
            raise AstroclassError(f"size must be between 32 and 512 pixels, got {self.size}")
        for name in ("pixel_scale", "seeing", "read_noise"):
            if getattr(self, name) <= 0 and not (name == "read_noise" and getattr(self, name) == 0):
                raise AstroclassError(f"{name} must be positive, got {getattr(self, name)}")
        lo, hi = self.mag_range()
        if lo >= hi:
            raise AstroclassError(f"mag_min ({lo}) must be brighter (smaller) than mag_max ({hi})")
        fwhm_px = self.seeing * max(BAND_PSF_SCALE.get(b, 1.0) for b in self.bands) * 1.15 / self.pixel_scale
        if fwhm_px > self.size / 4:
            raise AstroclassError(f"the PSF (FWHM up to {fwhm_px:.1f} px with seeing {self.seeing}\" at "
                                  f"{self.pixel_scale}\"/px) is too large for a {self.size} px stamp (at most "
                                  f"{self.size / 4:.0f} px); use a larger --size or --pixel-scale, or smaller --seeing")
        unknown = [b for b in self.bands if b not in BAND_OFFSET]
        if unknown or not self.bands:
            raise AstroclassError(f"bands must be among {list(BAND_OFFSET)}, got {list(self.bands)}")
        if self.task == "morph" and self.classes:
            allowed = TASKS["morph"] + EXTRA_MORPH
            bad = [c for c in self.classes if c not in allowed]
            if bad or len(set(self.classes)) < 2:
                raise AstroclassError(f"morph classes must be at least two of {allowed}, got {list(self.classes)}")
        if self.task != "morph" and self.classes:
            raise AstroclassError(f"--classes applies to the morph task only (task {self.task!r} has "
                                  f"{TASKS[self.task]})")
        if not 0 < self.star_fraction < 1:
            raise AstroclassError(f"star_fraction must be between 0 and 1, got {self.star_fraction}")
        return self


# ---------------------------------------------------------------------------------------------
# one object


def _profile(cls: str, rng: np.random.Generator, cfg: SynthConfig, truth: dict):
    """The GalSim profile (flux 1, before the PSF) of one object of class ``cls``; fills ``truth``."""
    import galsim

    def sersic(n_lo=0.5, n_hi=4.0, hlr_med=0.9):
        n = float(rng.uniform(n_lo, n_hi))
        hlr = float(np.clip(rng.lognormal(math.log(hlr_med), 0.5), 0.25, 4.0))
        q = float(rng.uniform(0.3, 1.0))
        beta = float(rng.uniform(0, 180))
        truth.update(sersic_n=n, hlr=hlr, q=q)
        return galsim.Sersic(n=n, half_light_radius=hlr).shear(q=q, beta=beta * galsim.degrees)

    if cls == "star":
        truth.update(sersic_n=float("nan"), hlr=0.0, q=1.0)
        return None
    if cls in ("galaxy", "isolated"):
        gal = sersic()
        if cls == "isolated" and rng.uniform() < 0.4:  # an unrelated field object away from the centre
            r, th = rng.uniform(6, 11), rng.uniform(0, 2 * math.pi)
            other = galsim.Gaussian(fwhm=0.05) if rng.uniform() < 0.5 else galsim.Exponential(half_light_radius=0.4)
            gal = gal + other.withFlux(float(rng.uniform(0.05, 0.4))).shift(r * math.cos(th), r * math.sin(th))
            truth["field_object"] = 1.0
        return gal
    if cls == "merger":
        sep = float(rng.uniform(1.0, 4.0))
        axis = float(rng.uniform(0, 180))
        ratio = float(rng.uniform(0.3, 1.0))
        parts = []
        for sign, frac in ((1, 1.0), (-1, ratio)):
            hlr = float(np.clip(rng.lognormal(math.log(0.8), 0.4), 0.3, 3.0))
            g = galsim.Sersic(n=float(rng.uniform(0.8, 3.0)), half_light_radius=hlr)
            g = g.shear(g=float(rng.uniform(0.2, 0.5)), beta=axis * galsim.degrees)  # tidal stretch along the axis
            dx, dy = sign * sep / 2 * math.cos(math.radians(axis)), sign * sep / 2 * math.sin(math.radians(axis))
            parts.append(g.withFlux(frac).shift(dx, dy))
        tail_dir = axis + float(rng.choice([-1, 1]) * rng.uniform(20, 60))
        tail = galsim.Gaussian(sigma=float(rng.uniform(0.8, 1.6))).shear(g=0.7, beta=tail_dir * galsim.degrees)
        d = sep / 2 + 1.5
        parts.append(tail.withFlux(float(rng.uniform(0.08, 0.2)) * (1 + ratio)).shift(
            d * math.cos(math.radians(tail_dir)), d * math.sin(math.radians(tail_dir))))
        truth.update(separation=sep, flux_ratio=ratio, hlr=float("nan"), q=float("nan"), sersic_n=float("nan"))
        return galsim.Add(parts)
    # morphology
    beta = float(rng.uniform(0, 180)) * galsim.degrees
    inc_q = float(rng.uniform(0.35, 1.0)) if cls != "edge_on" else float(rng.uniform(0.08, 0.2))
    disk_hlr = float(np.clip(rng.lognormal(math.log(2.2), 0.3), 1.0, 5.0))
    if cls == "elliptical":
        hlr = float(np.clip(rng.lognormal(math.log(1.6), 0.35), 0.6, 4.5))
        q = float(rng.uniform(0.55, 1.0))
        truth.update(bulge_fraction=1.0, hlr=hlr, q=q)
        return galsim.DeVaucouleurs(half_light_radius=hlr).shear(q=q, beta=beta)
    if cls == "irregular":
        disk = galsim.Exponential(half_light_radius=disk_hlr).shear(q=inc_q, beta=beta).withFlux(0.4)
        clumps = []
        for _ in range(int(rng.integers(4, 9))):
            r, th = rng.uniform(0, 1.6 * disk_hlr), rng.uniform(0, 2 * math.pi)
            clumps.append(galsim.Gaussian(sigma=float(rng.uniform(0.25, 0.7))).withFlux(float(rng.uniform(0.05, 0.2)))
                          .shift(r * math.cos(th), r * math.sin(th)))
        truth.update(bulge_fraction=0.0, hlr=disk_hlr, q=inc_q)
        return galsim.Add([disk, *clumps])
    bt = {"lenticular": rng.uniform(0.35, 0.7), "spiral": rng.uniform(0.05, 0.35),
          "barred_spiral": rng.uniform(0.05, 0.3), "edge_on": rng.uniform(0.0, 0.3)}[cls]
    bt = float(bt)
    bulge = galsim.DeVaucouleurs(half_light_radius=float(rng.uniform(0.3, 0.8))).withFlux(bt)
    truth.update(bulge_fraction=bt, hlr=disk_hlr, q=inc_q)
    if cls in ("lenticular", "edge_on"):
        disk = galsim.Exponential(half_light_radius=disk_hlr).withFlux(1 - bt)
        return galsim.Add([bulge, disk]).shear(q=inc_q, beta=beta)
    disk = _spiral_disk(rng, disk_hlr, cfg.pixel_scale).withFlux(1 - bt)
    parts = [bulge, disk]
    if cls == "barred_spiral":
        bar = galsim.Sersic(n=0.5, half_light_radius=0.5 * disk_hlr)
        parts.append(bar.shear(q=0.25, beta=float(rng.uniform(0, 180)) * galsim.degrees).withFlux(0.15))
    return galsim.Add(parts).shear(q=max(inc_q, 0.45), beta=beta)


def _spiral_disk(rng: np.random.Generator, hlr: float, pixel_scale: float):
    """An exponential disk modulated by m logarithmic arms, as a GalSim interpolated image."""
    import galsim

    m = int(rng.choice([2, 2, 3, 4]))
    pitch = math.radians(float(rng.uniform(12, 30)))
    amp = float(rng.uniform(0.6, 0.95))
    phase = float(rng.uniform(0, 2 * math.pi))
    h = hlr / 1.678
    scale = pixel_scale / 2
    n = int(2 * 5 * hlr / scale) | 1
    c = (n - 1) / 2
    y, x = np.mgrid[0:n, 0:n]
    x, y = (x - c) * scale, (y - c) * scale
    r = np.hypot(x, y) + 1e-3
    th = np.arctan2(y, x)
    arms = 1 + amp * np.cos(m * (th - np.log(r / h) / math.tan(pitch)) + phase)
    img = np.exp(-r / h) * arms * (1 - np.exp(-(r / (0.5 * h)) ** 2))  # arms fade into the bulge
    return galsim.InterpolatedImage(galsim.Image(img.astype(np.float64), scale=scale), flux=1.0)


def render_object(index: int, label: int, cfg: SynthConfig) -> tuple[np.ndarray, dict]:
    """Render object ``index`` of class ``label``: ((bands, size, size) float32 counts, truth)."""
    import galsim

    classes = cfg.class_names()
    cls = classes[label]
    rng = np.random.default_rng([cfg.seed, index])
    truth: dict = {"field_object": 0.0, "separation": float("nan"), "flux_ratio": float("nan"),
                   "bulge_fraction": float("nan")}
    mag_r = float(rng.uniform(*cfg.mag_range()))
    (gr_lo, gr_hi), (ri_lo, ri_hi) = COLOURS[cls]
    gr, ri = float(rng.uniform(gr_lo, gr_hi)), float(rng.uniform(ri_lo, ri_hi))
    fwhm_r = cfg.seeing * float(rng.uniform(0.85, 1.15))
    prof = _profile(cls, rng, cfg, truth)
    noise_seed = int(rng.integers(1, 2**31 - 1))
    sky_per_pix = 10 ** (-0.4 * (cfg.sky_mag - cfg.zero_point)) * cfg.pixel_scale ** 2
    bands = []
    snr_r = float("nan")
    for b_i, band in enumerate(cfg.bands):
        psf = galsim.Moffat(beta=3.0, fwhm=fwhm_r * BAND_PSF_SCALE[band])
        flux = 10 ** (-0.4 * (mag_r + BAND_OFFSET[band](gr, ri) - cfg.zero_point))
        obj = psf if prof is None else galsim.Convolve(prof, psf)
        img = obj.withFlux(flux).drawImage(nx=cfg.size, ny=cfg.size, scale=cfg.pixel_scale)
        clean = img.array.astype(np.float64)
        if band == "r":
            snr_r = float(math.sqrt(np.sum(clean ** 2 / (sky_per_pix + np.clip(clean, 0, None) + cfg.read_noise ** 2))))
        img.array[:] += sky_per_pix
        img.addNoise(galsim.CCDNoise(galsim.BaseDeviate(noise_seed + b_i), sky_level=0.0, gain=1.0,
                                     read_noise=cfg.read_noise))
        bands.append((img.array - sky_per_pix).astype(np.float32))
    truth.update(mag_r=mag_r, g_r=gr, r_i=ri, psf_fwhm=fwhm_r, snr_r=snr_r)
    return np.stack(bands), truth


def stretch_counts(counts: np.ndarray, cfg: SynthConfig) -> np.ndarray:
    """Sky-subtracted counts → [0, 1] with the asinh stretch shared by every object of ``cfg``."""
    sky_per_pix = 10 ** (-0.4 * (cfg.sky_mag - cfg.zero_point)) * cfg.pixel_scale ** 2
    soft = 3.0 * math.sqrt(sky_per_pix + cfg.read_noise ** 2)
    fwhm_px = cfg.seeing / cfg.pixel_scale
    peak = 10 ** (-0.4 * (cfg.mag_range()[0] - cfg.zero_point)) / (1.13 * fwhm_px ** 2)  # Gaussian-like central pixel
    return np.clip(np.arcsinh(counts / soft) / math.asinh(peak / soft), 0.0, 1.0)


def _render_and_scale(job: tuple[int, int], cfg: SynthConfig) -> tuple[np.ndarray, dict]:
    index, label = job
    counts, truth = render_object(index, label, cfg)
    return stretch_counts(counts, cfg).astype(np.float16), truth


def synthesize(cfg: SynthConfig, output: str | Path, fractions=(0.8, 0.1, 0.1), workers: int | None = None,
               overwrite: bool = False, show_progress: bool = True) -> Path:
    """Render ``cfg.n`` objects and write them as a prepared dataset with true-parameter columns."""
    from astroclass.data.images import ImageSpec
    from astroclass.data.prepared import PreparedWriter
    from astroclass.data.splits import stratified_split
    from astroclass.parallel import parallel_imap
    from astroclass.progress import Bar

    cfg.validate()
    output = Path(output)
    if output.exists() and not overwrite:
        raise AstroclassError(f"{output}: output exists (pass --overwrite to replace it)")
    if not output.parent.is_dir():
        raise AstroclassError(f"{output.parent}: output folder does not exist")
    from astroclass.extras import require

    require("galsim", "the synthetic sky (astroclass data synth, the demo)")
    classes = cfg.class_names()
    rng = np.random.default_rng([cfg.seed, 2**31])
    if cfg.task in ("sg", "mg"):
        labels = (rng.uniform(size=cfg.n) >= cfg.star_fraction).astype(np.int64)
        if cfg.task == "mg":
            labels = 1 - labels  # star_fraction is the merger fraction here
    else:
        labels = rng.permutation(np.arange(cfg.n) % len(classes)).astype(np.int64)
    split = stratified_split(labels, classes, tuple(fractions), cfg.seed)
    ids = [f"{cfg.task}-{cfg.seed}-{i:06d}" for i in range(cfg.n)]
    options = asdict(cfg)
    options["bands"] = list(cfg.bands)
    options["classes"] = list(cfg.classes) if cfg.classes else None
    options["mag_min"], options["mag_max"] = cfg.mag_range()
    options["stretch"] = "asinh(x / 3 sigma_sky) / asinh(peak / 3 sigma_sky), shared by all objects"
    truths: list[dict] = []
    with PreparedWriter(output, cfg.n, (len(cfg.bands), cfg.size, cfg.size), np.float16, classes,
                        overwrite) as writer, \
            Bar(show_progress, cfg.n, f"rendering {cfg.n} {cfg.task} objects") as bar:
        for image, truth in parallel_imap(_render_and_scale, list(zip(range(cfg.n), labels.tolist())), (cfg,),
                                          workers, chunk=8, progress=bar.advance):
            writer.append(image[None])
            truths.append(truth)
        keys = sorted(set().union(*truths))
        columns = {k: np.array([t.get(k, np.nan) for t in truths], dtype=np.float64) for k in keys}
        writer.finish(labels=labels, split=split, ids=ids, paths=[f"synthetic:{i}" for i in ids],
                      spec=ImageSpec(size=cfg.size),
                      source={"kind": "synthetic", "task": cfg.task, "generator": "galsim"},
                      options=options, band_names=list(cfg.bands), split_seed=cfg.seed, columns=columns)
    return output
