#!/usr/bin/env bash
# GPU check, sized for one H100/H200 (torch, timm, h5py, scikit-learn, PyYAML; nothing downloaded).
# From the repository root, with ../shared/data beside it:  bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=src
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
timeout 400 python benchmarks/gpu_grid.py          # the grid: --fuse off vs fused (results/grid_gpu.json)
timeout 300 python benchmarks/bench_train.py --steps 20 --pack 4
timeout 120 python benchmarks/gpu_train_check.py --model resnext50_32x4d --epochs 3
timeout 240 python benchmarks/compare_precision.py --model resnext50_32x4d --setup scratch --epochs 6 --seeds 0 1 2 || true
# streaming from disk on a GPU: pinned buffers and asynchronous copies vs images kept on the device
timeout 180 python benchmarks/bench_scale.py --n 20000 --folder /tmp/astroclass-scale || true
