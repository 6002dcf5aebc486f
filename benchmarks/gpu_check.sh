#!/usr/bin/env bash
# GPU check, sized for one H100/H200 (torch, timm, h5py, scikit-learn, PyYAML; nothing downloaded) and a lease
# of minutes. From the repository root, with ../shared/data beside it (or ASTROCLASS_BENCH_DATA naming a copy of
# its aries_star_galaxy folder's parent):  bash benchmarks/gpu_check.sh [--all]
# Results go to benchmarks/results (or ASTROCLASS_BENCH_RESULTS); each step saves what it measured as it goes.
#   default: the grid, --fuse off vs fused (gpu_grid.py: results/grid_gpu.json), about 7.5 minutes
#   --all:   then the per-backbone throughput, a real run fast vs --paper-exact, bf16 vs fp32 and streaming
#            from disk (about 15 more minutes)
#   --fusion: instead of the grid, where a fused group's time goes (about 7 minutes): bench_regions.py (grouped
#            regions against regrouping at every layer, one step), bench_spans.py (optimiser steps over each
#            run's views vs one span per shared optimiser: kernel launches) and gpu_fusion_profile.py on vgg16 and
#            resnext50_32x4d: 12 fused runs and one run alone, eager and with each step one CUDA graph
#            (compile: step-graph, checked against eager), then without regions and under torch.compile's graphs
#   --stepgraph: instead of the grid, about 7 minutes: gpu_fusion_profile.py on vgg16 and resnext50_32x4d (12 fused
#            runs and one alone, eager and as step graphs, and one alone under torch.compile's CUDA graphs), then
#            the fused grid of three backbones (gpu_grid.py, no 24-run cell) with step graphs where they paid
#   --accuracy: instead of the grid, accuracy.py on aries and galaxy10 (what fits a 64 MiB carry) with a
#            30 s budget per run, about 5 minutes; LITE0_WEIGHTS names efficientnet_lite0's weights file where
#            its package is not installed (accuracy.py --export-lite0 FILE writes one)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python -c "import sys, torch, timm; print('python', sys.version.split()[0], 'torch', torch.__version__, 'timm',
timm.__version__, 'cuda', torch.cuda.is_available())" || exit 1
if [[ "${1:-}" == "--fusion" ]]; then
  timeout 90 python benchmarks/bench_regions.py --batch 32 --repeats 5 --models vgg16,resnext50_32x4d,densenet121
  timeout 45 python benchmarks/bench_spans.py --runs 12 --repeats 5 --models resnext50_32x4d,densenet121
  timeout 300 python benchmarks/gpu_fusion_profile.py --models vgg16,resnext50_32x4d --nan-check '' --no-profile \
    --variants fused_grouped_nhwc,fused_grouped_nhwc_stepgraph,single_eager,single_stepgraph,\
fused_grouped_nhwc_per_layer,single_cudagraphs,fused_grouped_nhwc_cudagraphs
  exit $?
fi
if [[ "${1:-}" == "--stepgraph" ]]; then
  # 12 fused runs and one run alone, eager and with each step one CUDA graph; then the fused grid with step graphs
  # where they captured and beat eager steps for the first backbone, else with the default (eager) fused step
  timeout "${STEPGRAPH_PROFILE_S:-230}" python benchmarks/gpu_fusion_profile.py --models "${FUSION_MODELS:-vgg16,resnext50_32x4d}" \
    --nan-check '' --no-profile \
    --variants fused_grouped_nhwc,fused_grouped_nhwc_stepgraph,single_eager,single_stepgraph,single_cudagraphs
  mode=$(python - <<'PY'
import json, os, pathlib
d = pathlib.Path(os.environ.get("ASTROCLASS_BENCH_RESULTS", "benchmarks/results"))
try:
    row = next(iter(json.loads((d / "fusion_profile_gpu.json").read_text())["models"].values()))
    graph, eager = row["fused_grouped_nhwc_stepgraph"], row["fused_grouped_nhwc"]
    print("step-graph" if graph["step_graph"]["replayed_steps"] and graph["epoch_s"] < eager["epoch_s"] else "")
except (OSError, KeyError, StopIteration, TypeError):
    print("")
PY
)
  echo "fused grid compile option: '${mode:-default}'"
  timeout "${STEPGRAPH_GRID_S:-200}" python benchmarks/gpu_grid.py --compile "$mode" --skip-cell24 \
    --models "${GRID_MODELS:-vgg16,resnext50_32x4d,densenet121}" --name grid_gpu_${mode:-eager} \
    --budget "${STEPGRAPH_GRID_BUDGET:-110}" --deadline "${STEPGRAPH_GRID_DEADLINE:-185}" ${GRID_EXTRA:-}
  exit $?
fi
if [[ "${1:-}" == "--accuracy" ]]; then
  timeout 420 python benchmarks/accuracy.py --sets aries,galaxy10 --methods modern,paper_lite0,resnet18,small_cnn \
    --budget 30s ${LITE0_WEIGHTS:+--lite0-weights "$LITE0_WEIGHTS"}
  exit $?
fi
timeout 470 python benchmarks/gpu_grid.py
status=$?
if [[ "${1:-}" == "--all" ]]; then
  timeout 300 python benchmarks/bench_train.py --steps 20 --pack 4
  timeout 120 python benchmarks/gpu_train_check.py --model resnext50_32x4d --epochs 3
  timeout 240 python benchmarks/compare_precision.py --model resnext50_32x4d --setup scratch --epochs 6 --seeds 0 1 2
  # streaming from disk on a GPU: pinned buffers and asynchronous copies vs images kept on the device
  timeout 180 python benchmarks/bench_scale.py --n 20000 --folder /tmp/astroclass-scale
fi
exit $status
