#!/usr/bin/env bash
# Install napari-sam-lora with its test dependencies into .venv and run the checks:
# ruff, import-linter's layering contracts, then pytest under a virtual X display. What CI
# runs (.ci/run).
#
#   bash scripts/test.sh                 # everything
#   bash scripts/test.sh -k synthetic    # extra arguments go to pytest
#
# On a fresh Debian/Ubuntu machine, run as root it installs the missing system packages
# (Xvfb, Qt's xcb libraries); otherwise it lists them and stops. See scripts/_setup.sh for
# the environment variables it reads.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/_setup.sh
source scripts/_setup.sh

ensure_system_packages xvfb
ensure_venv "testing,pyqt6,batch"

lint_paths=()
for path in src tests benchmarks; do
  [[ -d "$path" ]] && lint_paths+=("$path")
done
log "ruff check ${lint_paths[*]}"
"$VENV/bin/python" -m ruff check "${lint_paths[@]}"
log "lint-imports (the layering contracts in pyproject.toml)"
"$VENV/bin/lint-imports" --no-cache

pytest_cmd=("$VENV/bin/python" -m pytest -v -p no:cacheprovider "$@")
if command -v xvfb-run >/dev/null 2>&1; then
  pytest_cmd=(xvfb-run -a "${pytest_cmd[@]}")
elif [[ "$(uname -s)" == Linux ]]; then
  die "xvfb-run not found; install the xvfb package"
fi
log "${pytest_cmd[*]}"
status=0
"${pytest_cmd[@]}" || status=$?
if [[ $status -eq 5 ]]; then
  die "pytest collected no tests"
elif [[ $status -ne 0 ]]; then
  die "tests failed (pytest exit code $status)"
fi
log "all checks passed"
