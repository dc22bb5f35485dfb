#!/usr/bin/env bash
# The README picture: `make demo`'s map in a real QGIS desktop under Xvfb, captured with ImageMagick.
#   resources/demo/screenshot.sh [OUT.png]        (default: resources/screenshot.png)
# Needs `make demo` to have run (its model, classes.tif, confidence.tif, metrics.json) and the
# Debian packages xvfb, imagemagick and qgis. The held-out polygons are styled by class with the
# colours below (a user's categorized style), so the map is drawn in the same colours.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)"
out="$(realpath -m "${1:-$repo/resources/screenshot.png}")"
demo="$repo/resources/demo"
for f in output/classes.tif output/confidence.tif output/metrics.json data/s2_demo.tif data/labels_test.gpkg; do
    [[ -f "$demo/$f" ]] || { echo "screenshot: $demo/$f is missing: run make demo first" >&2; exit 1; }
done
tmp="$(mktemp -d "${TMPDIR:-/tmp}/geossl-shot.XXXXXX")"
trap 'rm -rf -- "$tmp"' EXIT
bash "$repo/resources/install_plugin.sh" "$tmp/profiles/default" > /dev/null
export PROFILES="$tmp" SCENE="$repo/tests/plugin/desktop_scene.py" QGIS_LOG="$tmp/qgis.log" SHOT="$out"
export GEOSSL_SCENE_RASTER="$demo/data/s2_demo.tif" GEOSSL_SCENE_BANDS="4,3,2" \
    GEOSSL_SCENE_LABELS="$demo/data/labels_test.gpkg" GEOSSL_SCENE_FIELD="fclass" GEOSSL_SCENE_LABELS_NAME="held-out polygons" \
    GEOSSL_SCENE_CLASSES="$demo/output/classes.tif" GEOSSL_SCENE_CONFIDENCE="$demo/output/confidence.tif" \
    GEOSSL_SCENE_EVALUATE=1 \
    GEOSSL_SCENE_COLOURS='{"farm": "#f2d16b", "forest": "#1b7837", "grass": "#a6d96a", "meadow": "#d9f0a3",
                           "residential": "#d7301f", "scrub": "#8c6d31", "water": "#2c7bb6", "wetland": "#80cdc1"}' \
    GEOSSL_SCENE_BACKEND="$repo/backend/.venv/bin/geossl" GEOSSL_SCENE_DATA_DIR="$tmp/data" \
    GEOSSL_SCENE_DONE="$tmp/done.json" GEOSSL_SCENE_QUIT="$tmp/quit" GEOSSL_SCENE_TIMEOUT_S=120
xvfb-run -a -s "-screen 0 1600x1000x24" bash -c '
qgis --profiles-path "$PROFILES" --nologo --noversioncheck --code "$SCENE" > "$QGIS_LOG" 2>&1 &
pid=$!
for _ in $(seq 1 600); do [ -f "$GEOSSL_SCENE_DONE" ] && break; sleep 0.25; done
sleep 2
import -window root "$SHOT"
touch "$GEOSSL_SCENE_QUIT"
for _ in $(seq 1 80); do kill -0 $pid 2>/dev/null || break; sleep 0.25; done
kill $pid 2>/dev/null; wait $pid 2>/dev/null; exit 0'
grep -q '"errors": \[\]' "$tmp/done.json" || { cat "$tmp/done.json" "$QGIS_LOG" >&2; exit 1; }
echo "screenshot: $out"
