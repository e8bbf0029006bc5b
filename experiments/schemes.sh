#!/usr/bin/env bash
# Every state scheme on the quickstart's Mamba (T=16, B=32, 2000 steps, byte-level), evaluated at
# L = 16, 256, 4096, 32768 on the first 65536 validation tokens. Usage: bash experiments/schemes.sh [OUT_DIR]
set -euo pipefail
out=${1:-runs/schemes}
mkdir -p "$out"
for scheme in zero previous random_noise fitted_noise state_passing; do
  longssm train --config configs/quickstart.yaml --name "mamba-T16-$scheme" --state.scheme "$scheme" \
    --run-dir "$out/$scheme" --no-progress > "$out/$scheme.train.log"
  longssm eval "$out/$scheme" --lengths 16,256,4096,32768 --max-tokens 65536 --json "$out/$scheme.json" --no-progress
done
longssm compare "$out"/*.json --out "$out/compare"
