"""Prepared datasets: the HDF5 format, image reading, splits and importers."""

from astroclass.data.images import ImageSpec, read_image
from astroclass.data.importers import (
                                       ImportReport,
                                       build_dataset,
                                       import_catalog,
                                       import_efigi,
                                       import_folder,
                                       import_galaxy10,
)
from astroclass.data.prepared import SPLITS, PreparedDataset, write_prepared

__all__ = ["ImageSpec", "read_image", "ImportReport", "build_dataset", "import_catalog", "import_efigi",
           "import_folder", "import_galaxy10", "PreparedDataset", "write_prepared", "SPLITS"]
