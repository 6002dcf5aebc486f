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
#   --stepgraph: instead of the grid, about 8 minutes: gpu_fusion_profile.py on vgg16 and resnext50_32x4d with
#            cuDNN's heuristics (12 fused runs eager and as step graphs; one run as a step graph at batch 32, and
#            at 384, a bound on the fused rate), the step graphs again with its kernel timing (--cudnn-benchmark),
#            then the fused grid of three backbones as astroclass runs it (gpu_grid.py, no 24-run cell)
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
  # 12 fused runs and one alone, eager and as step graphs, with cuDNN's heuristics (astroclass's default) and with
  # its kernel timing; then the fused grid as astroclass runs it by default (step graphs on a GPU)
  timeout 160 python benchmarks/gpu_fusion_profile.py --nan-check '' --no-profile --name fusion_profile_gpu \
    --models "${FUSION_MODELS:-vgg16,resnext50_32x4d}" \
    --variants fused_grouped_nhwc,fused_grouped_nhwc_stepgraph,single_stepgraph,single_batch384_stepgraph
  timeout 100 python benchmarks/gpu_fusion_profile.py --cudnn-benchmark --nan-check '' --no-profile \
    --name fusion_profile_gpu_cudnn_benchmark --models "${FUSION_MODELS:-vgg16,resnext50_32x4d}" \
    --variants fused_grouped_nhwc_stepgraph,single_stepgraph
  timeout "${STEPGRAPH_GRID_S:-230}" python benchmarks/gpu_grid.py --skip-cell24 \
    --models "${GRID_MODELS:-vgg16,resnext50_32x4d,densenet121}" --name grid_gpu \
    --budget "${STEPGRAPH_GRID_BUDGET:-150}" --deadline "${STEPGRAPH_GRID_DEADLINE:-215}" ${GRID_EXTRA:-}
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
