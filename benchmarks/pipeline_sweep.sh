#!/usr/bin/env bash
# Pipeline settings of a trained recipe, chosen on validation phantoms (plain, clinical
# with the whole trunk in view, and clinical with a spine protocol's small field of
# view), with the real CTs reported beside them (decisions real-ct-recipe and min-views
# in benchmarks/decisions.md).
#
#   bash benchmarks/pipeline_sweep.sh RUN_DIR SETTINGS [SETTINGS ...]
#
# RUN_DIR is a `vertebra demo --recipe NAME --out RUN_DIR` folder. Each SETTINGS is a
# comma-separated list of PipelineConfig fields, e.g. peak_threshold=0.2,extend_threshold=0.1
# or min_views=7, applied on top of the settings stored in RUN_DIR/models/networks.pt
# ("-" for those alone: the bundle itself is used, so RUN_DIR may hold an ensemble's). Writes RUN_DIR/sweep/ (validation phantoms, one bundle and the
# labels per SETTINGS) and prints each one's pooled scores.
set -euo pipefail
run=${1:?usage: pipeline_sweep.sh RUN_DIR SETTINGS [SETTINGS ...]}
shift
[ $# -gt 0 ] || { echo "give at least one SETTINGS (or -)" >&2; exit 2; }
out=$run/sweep
UVR="uv run --extra learn --group bench"  # one environment for every step
mkdir -p "$out"
[ -d "$out/val_plain" ] || $UVR vertebra phantom "$out/val_plain" --seed 2024 --count 24
[ -d "$out/val_clinical" ] || $UVR vertebra phantom "$out/val_clinical" --seed 2024 --count 24 --clinical
[ -d "$out/val_spine" ] || $UVR vertebra phantom "$out/val_spine" --seed 2024 --count 24 --clinical --spine-fov 1
for settings in "$@"; do
  tag=$(echo "$settings" | tr ',=' '_-')
  bundle=$out/networks_$tag.pt
  if [ "$settings" = "-" ]; then
    bundle=$run/models/networks.pt
  else
  $UVR python - "$run" "$bundle" "$settings" <<'PY'
import sys

from vertebra.pipeline import bundle_networks, load_networks

run, bundle, settings = sys.argv[1:]
pipeline = dict(load_networks(f"{run}/models/networks.pt", device="cpu").settings)
for item in ([] if settings == "-" else settings.split(",")):
    name, value = item.split("=")
    pipeline[name] = None if value == "none" else float(value) if "." in value else int(value)
bundle_networks(f"{run}/models/localizer.pt", f"{run}/models/identifier.pt", bundle,
                pipeline=pipeline)
print("settings:", pipeline)
PY
  fi
  for set in val_plain val_clinical val_spine; do
    rm -rf "$out/labels_${set}_$tag"
    $UVR vertebra label "$out/$set" --model "$bundle" \
      --out "$out/labels_${set}_$tag" --no-pictures --device cpu >/dev/null
    echo "== $set, $settings"
    $UVR vertebra evaluate "$out/labels_${set}_$tag" "$out/$set" | grep -E "all|bootstrap"
  done
  echo "== real CTs, $settings"
  $UVR python benchmarks/real_ct.py --model "$bundle" --out "$out/real_$tag" \
    --name "sweep-$tag" | grep -E "GT,"
  rm -f "benchmarks/results/real-ct-sweep-$tag.json"
done
