#!/usr/bin/env bash
# Install the checkout's plugin into a QGIS profile for development:
#   <profile>/python/plugins/geossl_plugin -> <repo>/plugin   (a link, so edits show up on reload)
# and enable it in <profile>/QGIS/QGIS3.ini ([PythonPlugins] geossl_plugin=true).
#
# usage: resources/install_plugin.sh [PROFILE_DIR]
#   PROFILE_DIR defaults to QGIS's "default" profile of this user.
# Safe to run again: an old link is replaced; a real folder is never deleted; other settings are kept.
# Close QGIS first: it rewrites QGIS3.ini when it exits.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
name="geossl_plugin"

if [[ $# -gt 1 || "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    sed -n '2,9s/^# \{0,1\}//p' "$0"
    exit $(( $# > 1 ? 2 : 0 ))
fi

if [[ "$(uname -s)" == "Darwin" ]]; then
    default_profile="$HOME/Library/Application Support/QGIS/QGIS3/profiles/default"
else
    default_profile="${XDG_DATA_HOME:-$HOME/.local/share}/QGIS/QGIS3/profiles/default"
fi
profile="${1:-$default_profile}"
plugins_dir="$profile/python/plugins"
link="$plugins_dir/$name"
ini="$profile/QGIS/QGIS3.ini"

mkdir -p "$plugins_dir"
if [[ -L "$link" ]]; then
    rm -- "$link"
elif [[ -e "$link" ]]; then
    echo "install_plugin: error: $link exists and is not a link (an installed copy?)." >&2
    echo "  Remove it yourself (e.g. uninstall GeoSSL in QGIS's plugin manager) and run this again." >&2
    exit 1
fi
ln -s "$repo/plugin" "$link"

# Enable it: set geossl_plugin=true right under [PythonPlugins], drop older values of that key,
# and leave every other line exactly as it was.
mkdir -p "$(dirname "$ini")"
touch "$ini"
tmp="$(mktemp "${TMPDIR:-/tmp}/geossl-qgis3-ini.XXXXXX")"
trap 'rm -f -- "$tmp"' EXIT
awk -v key="$name" '
    function header(line) { sub(/\r$/, "", line); gsub(/^[ \t]+|[ \t]+$/, "", line); return line }
    /^[ \t]*\[/ {
        in_section = (header($0) == "[PythonPlugins]")
        print
        if (in_section && !done) { print key "=true"; done = 1 }
        next
    }
    in_section && $0 ~ ("^[ \t]*" key "[ \t]*=") { next }
    { print }
    END {
        if (!done) {
            if (NR > 0) print ""
            print "[PythonPlugins]"
            print key "=true"
        }
    }
' "$ini" > "$tmp"
cat -- "$tmp" > "$ini"  # rewrite in place: keeps the file's mode, owner and any link to it

echo "GeoSSL plugin linked: $link -> $repo/plugin"
echo "Enabled in: $ini"
