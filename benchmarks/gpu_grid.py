"""The paper's grid on one GPU: ``--fuse off`` (one run per worker, ``--per-gpu 4`` packed) vs fused runs.

``bench_grid.py`` with the GPU's sizes: the five paper backbones × the paper's 24 settings on all 3388
ARIES cutouts at 76 px, 2 epochs per run (pretrained: 1 head epoch + 2), each grid run twice in this
call. Results: benchmarks/results/grid_gpu.json (saved after each step). The steps run fused grids first,
then the 24-run cells, then the ``--fuse off`` grids (each of whose workers compiles every backbone:
minutes each), and none starts after 300 s (``--budget``), so the call ends within about 6 minutes on one
H100 with whatever it reached; ``--models`` runs fewer backbones.

Usage (from the repository root, with ../shared/data beside it): PYTHONPATH=src python benchmarks/gpu_grid.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_grid import main  # noqa: E402

from astroclass.models import PAPER_MODELS  # noqa: E402

if __name__ == "__main__":
    main(defaults={"models": ",".join(PAPER_MODELS), "images": 3388, "size": 76, "epochs": 2, "per_gpu": 4,
                   "name": "grid_gpu", "budget": 300})
