#!/usr/bin/env bash
# The main job on a fresh machine: set up the environment, run the whole pipeline on the active profile
# (params.yaml: `profile: toy` by default) and print the report table.
# Usage: bash scripts/main.sh [extra dvc repro args]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup-env.sh
dvc repro "$@"
echo; cat reports/results.md
echo "Figures: reports/figures/   Executed report notebook: reports/report.ipynb"
