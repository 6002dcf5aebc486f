"""The paper's grid on one GPU: ``--fuse off`` (one run per worker, ``--per-gpu 4`` packed) vs fused runs.

``bench_grid.py`` with the GPU's sizes: the five paper backbones × the paper's 24 settings on all 3388
ARIES cutouts at 76 px, 2 epochs per run (pretrained: 1 head epoch + 2), each grid run twice in this
call. Results: benchmarks/results/grid_gpu.json (saved after each step). The steps run the fused grids of
all five first (the 600-run projection needs each), then per backbone its ``--fuse off`` grid (each of whose
4 workers compiles the backbone) and its 24-run cell; none starts after 330 s (``--budget``) and a grid still
running at 430 s is stopped (``--deadline``), so the call ends within about 7.5 minutes on one H100/H200
with whatever it reached, saying what it skipped; ``--models`` runs fewer backbones.

Usage (from the repository root, with ../shared/data beside it): PYTHONPATH=src python benchmarks/gpu_grid.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_grid import main  # noqa: E402

from astroclass.models import PAPER_MODELS  # noqa: E402

if __name__ == "__main__":
    # the quicker backbones first
    order = ["vgg16", "resnext50_32x4d", "densenet121", "inception_v3", "inception_resnet_v2"]
    assert sorted(order) == sorted(PAPER_MODELS)
    main(defaults={"models": ",".join(order), "images": 3388, "size": 76, "epochs": 2, "per_gpu": 4,
                   "name": "grid_gpu", "budget": 330, "deadline": 430, "cell_repeats": 1})
