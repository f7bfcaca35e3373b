#!/usr/bin/env bash
# The main job on a fresh machine: set up the environment, run the headline study on the active profile
# (params.yaml: `profile: toy` by default; dvc.yaml) and print its table. Minutes on a 2-core CPU.
# Usage: bash scripts/main.sh [extra dvc repro args]
#        bash scripts/main.sh --full [extra dvc repro args]   # the full study (study/dvc.yaml): about 90 min on 2 cores
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup-env.sh
if [ "${1:-}" = "--full" ]; then
  shift
  dvc repro study/dvc.yaml "$@"
  echo; cat reports/results.md
  echo "Figures: reports/figures/   Executed report notebook: reports/report.ipynb"
else
  dvc repro "$@"
  echo; cat reports/headline/results.md
  echo; cat reports/headline/infinity.md
  echo; cat reports/headline/video.md
  echo; cat reports/headline/video_sweep.md
  echo "Figures: reports/headline/paired.png (paired differences), reports/headline/grid.png (samples), reports/headline/infinity_grid.png (toy Infinity samples), reports/headline/video_frames.png (toy InfinityStar clips)"
fi
