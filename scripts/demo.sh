#!/usr/bin/env bash
# Install napari-sam-lora into .venv and open napari with a synthetic sample stack and the
# SAM2 LoRA widget docked. A .venv that scripts/test.sh set up is reused as it is (it has
# every extra the demo needs); pip runs only when .venv lacks them or pyproject.toml or
# napari.yaml changed since. Arguments go to `napari-sam-lora demo`, e.g.
#
#   bash scripts/demo.sh --sample occlusion --image-size 512
#   bash scripts/demo.sh --model sam2.1_hiera_tiny      # real weights (downloaded once)
#
# The default model is untrained:sam2.1_hiera_tiny (random weights, labelled UNTRAINED), so
# the demo works offline. Without a display (Linux), it runs under Xvfb and you will not see
# the window. See scripts/_setup.sh for the environment variables it reads.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/_setup.sh
source scripts/_setup.sh

if has_display; then
  ensure_system_packages
else
  ensure_system_packages xvfb
fi
ensure_venv "pyqt6,batch"

if has_display; then
  exec "$VENV/bin/napari-sam-lora" demo "$@"
fi
log "no display found: running under a virtual display (xvfb-run); the window is not visible"
exec xvfb-run -a "$VENV/bin/napari-sam-lora" demo "$@"
