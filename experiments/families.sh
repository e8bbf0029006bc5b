#!/usr/bin/env bash
# The quickstart experiment (zero vs previous initial state, T=16) for every model family.
# Usage: bash experiments/families.sh [OUT_DIR] [FAMILY ...]
set -euo pipefail
out=${1:-runs/families}
shift || true
families=${*:-mamba mamba2 s5 gru lstm}
for family in $families; do
  longssm quickstart --family "$family" --out "$out/$family" --no-progress > "$out.$family.log" 2>&1 || { echo "$family failed: see $out.$family.log"; exit 1; }
  tail -n 5 "$out/$family/results.md"
done
