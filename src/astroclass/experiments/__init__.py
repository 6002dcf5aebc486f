"""The comparison grid: specs, the SQLite results store, engines and the runner."""

from astroclass.experiments.runner import GridOptions, open_experiment, run_grid
from astroclass.experiments.spec import GridSpec, RunSpec, run_id
from astroclass.experiments.store import Store

__all__ = ["GridOptions", "GridSpec", "RunSpec", "Store", "open_experiment", "run_grid", "run_id"]
