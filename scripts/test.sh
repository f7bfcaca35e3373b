#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite: notebook tests, conformance, integration.
# Usage: bash scripts/test.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup-env.sh
python -m pytest tests -q -rs "$@"
