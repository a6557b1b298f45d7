#!/usr/bin/env bash
# Detection threshold of a trained recipe, chosen on validation phantoms (plain and
# clinical), with the real CTs reported beside it (decision real-ct-recipe in
# benchmarks/decisions.md).
#
#   bash benchmarks/peak_threshold_sweep.sh RUN_DIR [THRESHOLD ...]
#
# RUN_DIR is a `vertebra demo --recipe real-ct --out RUN_DIR` folder. Writes
# RUN_DIR/sweep/ (bundles, labels) and prints each threshold's pooled scores; the
# extend threshold is half the peak threshold, as in the recipes.
set -euo pipefail
run=${1:?usage: peak_threshold_sweep.sh RUN_DIR [THRESHOLD ...]}
shift
thresholds=("${@:-0.3 0.2 0.15}")
read -r -a thresholds <<<"${thresholds[*]}"
out=$run/sweep
UVR="uv run --extra learn --group bench"  # one environment for every step
mkdir -p "$out"
[ -d "$out/val_plain" ] || $UVR vertebra phantom "$out/val_plain" --seed 2024 --count 24
[ -d "$out/val_clinical" ] || $UVR vertebra phantom "$out/val_clinical" --seed 2024 --count 24 --clinical
for t in "${thresholds[@]}"; do
  e=$(python3 -c "print($t / 2)")
  bundle=$out/networks_$t.pt
  $UVR python -c "
from vertebra.pipeline import bundle_networks
bundle_networks('$run/models/localizer.pt', '$run/models/identifier.pt', '$bundle',
                pipeline={'localizer_views': 20, 'peak_threshold': $t,
                          'extend_threshold': $e, 'allow_t13': False})"
  for set in val_plain val_clinical; do
    rm -rf "$out/labels_${set}_$t"
    $UVR vertebra label "$out/$set" --model "$bundle" \
      --out "$out/labels_${set}_$t" --no-pictures --device cpu >/dev/null
    echo "== $set, peak threshold $t"
    $UVR vertebra evaluate "$out/labels_${set}_$t" "$out/$set" | grep -E "all|bootstrap"
  done
  echo "== real CTs, peak threshold $t"
  $UVR python benchmarks/real_ct.py --model "$bundle" --out "$out/real_$t" \
    --name "sweep-$t" --set "peak_threshold=$t" --set "extend_threshold=$e" | grep -E "GT,"
  rm -f "benchmarks/results/real-ct-sweep-$t.json"
done
