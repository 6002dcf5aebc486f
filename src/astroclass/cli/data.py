"""``astroclass data ...``: import sources into prepared datasets, inspect them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

data_app = typer.Typer(help="Prepare labelled datasets (HDF5) from cut-out images, catalogues, public sets, or survey "
                            "images (FITS with a WCS) cut out at a catalogue's RA/Dec; inspect them.",
                       no_args_is_help=True)
import_app = typer.Typer(help="Import a source into a prepared dataset (one HDF5 file): a folder or catalogue of "
                              "cut-out files, EFIGI, Galaxy10, or 'sky': cut-outs at RA/Dec from survey images.",
                         no_args_is_help=True)
data_app.add_typer(import_app, name="import")

Output = Annotated[Path, typer.Option("--output", "-o", help="The prepared dataset to write (.h5).")]
Size = Annotated[int, typer.Option(help="Stored image size in pixels (square); the paper uses 76.")]
Channels = Annotated[int, typer.Option(help="Channels for 8-bit images: 3 (RGB) or 1 (grey). FITS keeps its bands.")]
Bands = Annotated[str | None, typer.Option(help="FITS bands to keep, in order: indices or names from the "
                                                   "header keyword BANDS, e.g. 'g,r,i' or '1,2,3'.")]
Stretch = Annotated[str, typer.Option(help="FITS stretch per band after the interval: asinh, linear, sqrt, log.")]
Interval = Annotated[str, typer.Option(help="FITS interval per band: percentile or minmax.")]
Percentile = Annotated[float, typer.Option(help="FITS percentile interval: keep the central P per cent of values.")]
Magnitudes = Annotated[bool, typer.Option("--fits-magnitudes", help="FITS pixel values are magnitudes "
                                                                  "(smaller = brighter): convert to flux first.")]
PadSquare = Annotated[bool, typer.Option("--pad-square", help="Pad images that are not square to a square with "
                                                             "their median (centred); without it they are refused, "
                                                             "never stretched.")]
BandScaling = Annotated[str, typer.Option(help="FITS bands: 'per-band' scales each band on its own (each fills "
                                               "[0, 1]: colour is lost); 'joint' scales them together (Lupton et al. "
                                               "2004: colour kept).")]
Split = Annotated[str, typer.Option(help="train,val,test fractions (stratified by class).")]
Seed = Annotated[int, typer.Option(help="Seed of the split; same input and seed give a byte-identical file.")]
Workers = Annotated[int | None, typer.Option(help="Decoding processes (default: all cores).")]
SkipBad = Annotated[bool, typer.Option("--skip-bad", help="Leave out unreadable images instead of failing; they are "
                                                         "listed in OUTPUT.skipped.csv.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace the output file if it exists.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or progress lines.")]
MinPerClass = Annotated[int, typer.Option(help="Warn when a class has fewer images than this.")]
Duplicates = Annotated[str, typer.Option(help="Identical images: 'together' keeps each group in one split, "
                                              "'drop' keeps the first copy, 'error' refuses.")]


def _common(size, channels, bands, stretch, interval, percentile, magnitudes, split, seed, workers, skip_bad, overwrite,
            min_per_class, duplicates, band_scaling="per-band", pad_square=False, quiet=False) -> dict:
    from astroclass.data.images import ImageSpec
    from astroclass.data.splits import parse_fractions

    spec = ImageSpec(size=size, channels=channels,
                     bands=tuple(b.strip() for b in bands.split(",") if b.strip()) if bands else None,
                     fits_interval=interval, fits_percentile=percentile, fits_stretch=stretch,
                     fits_magnitudes=magnitudes, band_scaling=band_scaling, pad_square=pad_square)
    return dict(spec=spec, fractions=parse_fractions(split), seed=seed, workers=workers, skip_bad=skip_bad,
                overwrite=overwrite, min_per_class=min_per_class, duplicates=duplicates, show_progress=not quiet)


def _done(report) -> None:
    from astroclass.data.importers import describe

    typer.echo(describe(report))


@import_app.command("folder")
def import_folder_cmd(root: Annotated[Path, typer.Argument(help="ROOT/CLASS/image files (PNG, JPEG, FITS...).")],
                      output: Output, size: Size = 76, channels: Channels = 3, bands: Bands = None,
                      stretch: Stretch = "asinh", interval: Interval = "percentile", percentile: Percentile = 99.5,
                      fits_magnitudes: Magnitudes = False, band_scaling: BandScaling = "per-band",
                      pad_square: PadSquare = False, split: Split = "0.8,0.1,0.1", seed: Seed = 0,
                      workers: Workers = None, skip_bad: SkipBad = False, overwrite: Overwrite = False,
                      min_per_class: MinPerClass = 10, duplicates: Duplicates = "together", quiet: Quiet = False):
    """Import an ImageFolder-style tree: one sub-folder per class."""
    from astroclass.data.importers import import_folder

    _done(import_folder(root, output, **_common(size, channels, bands, stretch, interval, percentile, fits_magnitudes,
                                                split, seed, workers, skip_bad, overwrite, min_per_class, duplicates,
                                                band_scaling, pad_square, quiet=quiet)))


@import_app.command("catalog")
def import_catalog_cmd(catalog: Annotated[Path, typer.Argument(
                           help="CSV or FITS table with a path and a label column.")],
                       output: Output,
                       root: Annotated[Path | None, typer.Option(help="Folder the paths are relative to "
                                                                         "(default: the catalogue's folder).")] = None,
                       path_col: Annotated[str, typer.Option(help="Column with image paths.")] = "path",
                       label_col: Annotated[str, typer.Option(help="Column with class labels.")] = "label",
                       id_col: Annotated[str | None, typer.Option(help="Column with object ids "
                                                                          "(default: file stem).")] = None,
                       allow_outside: Annotated[bool, typer.Option("--allow-outside", help="Let paths leave the "
                                                                   "--root folder (absolute or ../ paths).")] = False,
                       size: Size = 76, channels: Channels = 3, bands: Bands = None, stretch: Stretch = "asinh",
                       interval: Interval = "percentile", percentile: Percentile = 99.5,
                       fits_magnitudes: Magnitudes = False, band_scaling: BandScaling = "per-band",
                       pad_square: PadSquare = False, split: Split = "0.8,0.1,0.1",
                       seed: Seed = 0, workers: Workers = None, skip_bad: SkipBad = False, overwrite: Overwrite = False,
                       min_per_class: MinPerClass = 10, duplicates: Duplicates = "together", quiet: Quiet = False):
    """Import cut-out image files listed in a catalogue (CSV, FITS table, VOTable, Parquet, ECSV) with a path
    and a label column. For a catalogue of RA/Dec positions on survey images, use 'data import sky'."""
    from astroclass.data.importers import import_catalog

    _done(import_catalog(catalog, output, root=root, path_col=path_col, label_col=label_col, id_col=id_col,
                         allow_outside=allow_outside,
                         **_common(size, channels, bands, stretch, interval, percentile, fits_magnitudes, split,
                                   seed, workers, skip_bad, overwrite, min_per_class, duplicates, band_scaling,
                                   pad_square, quiet=quiet)))


BandOption = Annotated[list[str] | None, typer.Option(
    "--band", metavar="NAME=FILES",
    help="A band and its FITS images: a glob, with an optional [HDU] (number or EXTNAME) after the file name, e.g. "
         "--band g='frame-g-*.fits.bz2' --band r='tiles/*_r.fits.fz[1]'. Repeat per band, or per pattern.")]
ImagesOption = Annotated[list[str] | None, typer.Option(
    "--images", metavar="FILES",
    help="FITS images whose band their header names (2-D: FILTER or BAND; a cube: BANDS, one band per plane). "
         "Repeatable; combines with --band.")]
RaCol = Annotated[str | None, typer.Option(
    help="Longitude column (default: the first of ra/dec, RA/DEC, RAJ2000/DEJ2000, ALPHA_J2000/DELTA_J2000, ... or "
         "galactic l/b, glon/glat). Degrees unless the column's unit says otherwise; sexagesimal text works.")]
DecCol = Annotated[str | None, typer.Option(help="Latitude column (see --ra-col).")]
Frame = Annotated[str | None, typer.Option(
    help="Frame of the coordinates: icrs (default for RA/Dec), fk5, fk4, galactic (default for l/b), or any other "
         "astropy knows.")]
Edge = Annotated[str, typer.Option(help="Objects whose cut-out reaches beyond an image's edge: 'pad' keeps them, "
                                        "filled with the local sky and flagged by cutout_coverage < 1; 'skip' leaves "
                                        "them out, with the reason.")]
CutoutSize = Annotated[int | None, typer.Option(help="Cut-out side in pixels of the reference band (default: --size); "
                                                     "resampled to --size when they differ.")]
ReferenceBand = Annotated[str | None, typer.Option(help="The band whose pixel grid the cut-outs follow (default: the "
                                                        "first); the others are aligned to it on the sky.")]
SKY_SCALING = "per-band"
"""The default band scaling of cut-outs from survey images (measured: benchmarks/bench_sky_scaling.py)."""


def band_patterns(band: list[str] | None) -> dict[str, list[str]]:
    """--band NAME=FILES options → {name: [patterns]}, in the order given."""
    from astroclass.errors import AstroclassError

    out: dict[str, list[str]] = {}
    for text in band or []:
        name, eq, pattern = text.partition("=")
        if not eq or not name.strip() or not pattern.strip():
            raise AstroclassError(f"--band {text!r}: expected NAME=FILES, e.g. --band g='frame-g-*.fits.bz2'")
        out.setdefault(name.strip(), []).append(pattern.strip())
    return out


@import_app.command("sky")
def import_sky_cmd(catalog: Annotated[Path, typer.Argument(
                       help="Catalogue of positions (CSV, FITS table, VOTable, Parquet, ECSV), optionally with a "
                            "label column.")],
                   output: Output, band: BandOption = None, images: ImagesOption = None,
                   bands: Annotated[str | None, typer.Option(
                       help="The bands to stack, in order, e.g. 'g,r,i' (default: every band given, by "
                            "wavelength).")] = None,
                   ra_col: RaCol = None, dec_col: DecCol = None, frame: Frame = None,
                   label_col: Annotated[str | None, typer.Option(
                       help="Column with class labels (default: 'label' if the catalogue has one; without labels "
                            "the dataset holds objects to classify).")] = None,
                   id_col: Annotated[str | None, typer.Option(help="Column with object ids (default: the row "
                                                                    "number).")] = None,
                   cutout_size: CutoutSize = None, reference_band: ReferenceBand = None, edge: Edge = "pad",
                   size: Size = 76, band_scaling: BandScaling = SKY_SCALING, stretch: Stretch = "asinh",
                   interval: Interval = "percentile", percentile: Percentile = 99.5,
                   split: Split = "0.8,0.1,0.1", seed: Seed = 0, workers: Workers = None,
                   skip_bad: SkipBad = False, overwrite: Overwrite = False, min_per_class: MinPerClass = 10,
                   duplicates: Duplicates = "together", quiet: Quiet = False):
    """Cut objects out of survey images (FITS with a WCS) at the RA/Dec (or l/b) of a catalogue: one cut-out
    per object and band, centred on its position in each band's image and aligned on the sky, stacked in band
    order. Every catalogue column is kept with its object, with the image file, HDU and pixel position per
    band. Objects on no image of a band, or partial with --edge skip, are listed in OUTPUT.skipped.csv."""
    from astroclass.data.sky import import_sky

    common = _common(size, 3, None, stretch, interval, percentile, False, split, seed, workers, skip_bad, overwrite,
                     min_per_class, duplicates, band_scaling, quiet=quiet)
    order = [b.strip() for b in bands.split(",") if b.strip()] if bands else None
    _done(import_sky(catalog, output, bands=band_patterns(band), images=images or [], band_order=order,
                     ra_col=ra_col, dec_col=dec_col, frame=frame, label_col=label_col, id_col=id_col,
                     cutout_size=cutout_size, reference_band=reference_band, edge=edge, **common))


@import_app.command("efigi")
def import_efigi_cmd(catalog: Annotated[Path, typer.Argument(help="EFIGI_attributes.txt (EFIGI catalogue).")],
                     images: Annotated[Path, typer.Argument(help="Folder or .tgz with the EFIGI PGC*.png images.")],
                     output: Output,
                     view: Annotated[str, typer.Option(help="EF-2, EF-4 or EF-15 (the paper's groupings).")] = "EF-4",
                     size: Size = 76, split: Split = "0.8,0.1,0.1", seed: Seed = 0, workers: Workers = None,
                     skip_bad: SkipBad = False, overwrite: Overwrite = False, min_per_class: MinPerClass = 10,
                     duplicates: Duplicates = "together", quiet: Quiet = False):
    """Import EFIGI galaxies as the paper's EF-2, EF-4 or EF-15 view."""
    from astroclass.data.importers import import_efigi

    _done(import_efigi(catalog, images, view, output, **_common(size, 3, None, "asinh", "percentile", 99.5, False,
                                                                split,
                                                                seed, workers, skip_bad, overwrite, min_per_class,
                                                                duplicates, quiet=quiet)))


@import_app.command("galaxy10")
def import_galaxy10_cmd(h5: Annotated[Path, typer.Argument(help="Galaxy10_DECals.h5 or Galaxy10.h5 (SDSS).")],
                        output: Output, size: Size = 76, split: Split = "0.8,0.1,0.1", seed: Seed = 0,
                        workers: Workers = None, skip_bad: SkipBad = False, overwrite: Overwrite = False,
                        min_per_class: MinPerClass = 10, duplicates: Duplicates = "together", quiet: Quiet = False):
    """Import an official Galaxy10 file (DECaLS or SDSS layout) with its 10 class names."""
    from astroclass.data.importers import import_galaxy10

    _done(import_galaxy10(h5, output, **_common(size, 3, None, "asinh", "percentile", 99.5, False, split, seed, workers,
                                                skip_bad, overwrite, min_per_class, duplicates, quiet=quiet)))


@data_app.command("info")
def info_cmd(file: Annotated[Path, typer.Argument(help="A prepared dataset (.h5).")],
             preview: Annotated[Path | None, typer.Option(help="Write a contact sheet PNG of random examples "
                                                                  "per class.")] = None,
             per_class: Annotated[int, typer.Option(help="Examples per class in the preview.")] = 8,
             overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the preview if it exists.")] = False,
             check: Annotated[bool, typer.Option(help="Read every image once and list the rows of damaged blocks "
                                                      "(exit 1 if any).")] = True):
    """Classes, counts per split, image shape, provenance; every image read back to find damage; a preview."""
    if preview is not None:
        from astroclass.fileio import check_output

        check_output(preview, overwrite, [file], "preview")
    from rich.console import Console
    from rich.table import Table

    from astroclass.data.prepared import PreparedDataset

    with PreparedDataset(file) as ds:
        console = Console()
        counts = ds.counts()
        table = Table(title=f"{file} — {len(ds)} images {ds.image_shape} {ds.dtype}")
        table.add_column("class")
        for s in counts:
            table.add_column(s, justify="right")
        table.add_column("total", justify="right")
        for c in ds.class_names or ["(unlabelled)"]:
            row = [counts[s][c] for s in counts]
            table.add_row(c, *map(str, row), str(sum(row)))
        table.add_row("all", *[str(sum(counts[s].values())) for s in counts], str(len(ds)), style="bold")
        console.print(table)
        console.print(f"source: {ds.source}")
        console.print(f"bands: {ds.band_names or '(8-bit image channels)'}; image spec: {ds.spec.to_dict()}")
        console.print(f"split seed: {ds.attrs.get('split_seed')}; content hash: {ds.content_hash}; "
                      f"astroclass {ds.attrs.get('astroclass_version')}")
        if check:
            from astroclass.errors import AstroclassError
            from astroclass.progress import Bar

            with Bar(console.is_terminal, len(ds), "reading every image") as bar:
                read = [0]

                def advance(done: int) -> None:
                    bar.advance(done - read[0])
                    read[0] = done

                bad = ds.damaged_rows(advance)
            if bad:
                rows = ", ".join(f"{a}-{b}" for a, b in bad[:10]) + (" …" if len(bad) > 10 else "")
                raise AstroclassError(f"{file}: {sum(b - a + 1 for a, b in bad)} images in {len(bad)} damaged "
                                      f"block(s), rows {rows}: import the dataset again from its sources")
            console.print(f"all {len(ds)} images read back")
        if preview is not None:
            from astroclass.data.preview import contact_sheet

            console.print(f"preview: {contact_sheet(ds, preview, per_class=per_class)}")


@data_app.command("synth")
def synth_cmd(task: Annotated[str, typer.Argument(help="sg (stars vs galaxies), mg (mergers vs isolated) or morph "
                                                       "(elliptical, lenticular, spiral, irregular).")],
              output: Output,
              n: Annotated[int, typer.Option("-n", "--n", help="Number of objects.")] = 1000,
              seed: Annotated[int, typer.Option(help="Same seed, same bytes.")] = 0,
              size: Annotated[int, typer.Option(help="Stamp size in pixels.")] = 76,
              bands: Annotated[str, typer.Option(help="Bands, in wavelength order, from u,g,r,i,z.")] = "g,r,i",
              pixel_scale: Annotated[float, typer.Option(help="arcsec per pixel.")] = 0.396,
              seeing: Annotated[float, typer.Option(help="PSF FWHM in the r band, arcsec.")] = 1.4,
              mag_min: Annotated[float | None, typer.Option(help="Brightest r magnitude (default per task).")] = None,
              mag_max: Annotated[float | None, typer.Option(help="Faintest r magnitude (default per task).")] = None,
              sky_mag: Annotated[float, typer.Option(help="Sky brightness, r mag/arcsec².")] = 20.9,
              read_noise: Annotated[float, typer.Option(help="Read noise, electrons per pixel.")] = 5.0,
              classes: Annotated[str | None, typer.Option(help="morph only: classes, from elliptical, lenticular, "
                                                                  "spiral, irregular, barred_spiral, edge_on.")] = None,
              fraction: Annotated[float, typer.Option(help="sg: fraction of stars; mg: fraction of mergers.")] = 0.5,
              split: Split = "0.8,0.1,0.1", workers: Workers = None, overwrite: Overwrite = False,
              quiet: Quiet = False):
    """Render labelled multi-band cutouts with GalSim (stored with their true parameters)."""
    from astroclass.data.splits import parse_fractions
    from astroclass.data.synth import SynthConfig, synthesize

    cfg = SynthConfig(task=task, n=n, seed=seed, size=size,
                      bands=tuple(b.strip() for b in bands.split(",") if b.strip()),
                      pixel_scale=pixel_scale, seeing=seeing, mag_min=mag_min, mag_max=mag_max, sky_mag=sky_mag,
                      read_noise=read_noise, star_fraction=fraction,
                      classes=tuple(c.strip() for c in classes.split(",")) if classes else None).validate()
    path = synthesize(cfg, output, parse_fractions(split), workers=workers, overwrite=overwrite,
                      show_progress=not quiet)
    typer.echo(f"wrote {path} ({n} {task} objects, classes {cfg.class_names()}, bands {list(cfg.bands)})")
