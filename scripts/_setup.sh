# shellcheck shell=bash
# Shared setup for scripts/test.sh and scripts/demo.sh; source it from the repository root.
#
#   ensure_system_packages [xvfb]   Debian/Ubuntu libraries Qt and napari need (and Xvfb)
#   ensure_venv EXTRAS              create/reuse .venv and `pip install -e ".[EXTRAS]"`, unless
#                                   .venv already has EXTRAS or more from an install of the same
#                                   pyproject.toml and napari.yaml (demo.sh reuses test.sh's)
#   has_display                     true when a desktop display is available
#
# Environment:
#   PYTHON                      interpreter used to create .venv (default: python3, >= 3.11)
#   NAPARI_SAM_LORA_VENV        virtual environment folder (default: .venv in the repository)
#   NAPARI_SAM_LORA_PIP_ARGS    extra pip arguments, e.g.
#                               "--extra-index-url https://download.pytorch.org/whl/cpu"
#   NAPARI_SAM_LORA_REINSTALL=1 run pip even if nothing changed since the last install

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${NAPARI_SAM_LORA_VENV:-$REPO_ROOT/.venv}"

# Shared libraries the Qt xcb platform plugin, OpenGL (vispy) and fonts need.
QT_APT_PACKAGES=(
  libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxcb-image0 libxcb-randr0
  libxcb-render-util0 libxcb-shape0 libxcb-xfixes0 libxcb-cursor0 libgl1 libegl1
  libxkbcommon-x11-0 libdbus-1-3 libfontconfig1
)
XVFB_APT_PACKAGES=(xvfb xauth)

log() { printf '==> %s\n' "$*" >&2; }
die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}

has_display() {
  [[ "$(uname -s)" != Linux ]] || [[ -n "${DISPLAY:-}" || -n "${WAYLAND_DISPLAY:-}" ]]
}

_is_root() { [[ "$(id -u)" -eq 0 ]]; }

_apt_install() {
  log "installing system packages: $*"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q "$@"
}

# ensure_system_packages [xvfb]: on Debian-like Linux, install what is missing (as root) or
# say what to install and fail (not root). Elsewhere there is nothing to check.
ensure_system_packages() {
  [[ "$(uname -s)" == Linux ]] || return 0
  local wanted=("${QT_APT_PACKAGES[@]}")
  if [[ "${1:-}" == xvfb ]]; then
    wanted+=("${XVFB_APT_PACKAGES[@]}")
  fi
  if ! command -v dpkg-query >/dev/null 2>&1; then
    log "not a Debian-like system: make sure Xvfb and the Qt xcb libraries are installed"
    return 0
  fi
  local missing=() pkg
  for pkg in "${wanted[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed'; then
      missing+=("$pkg")
    fi
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  if _is_root && command -v apt-get >/dev/null 2>&1; then
    _apt_install "${missing[@]}"
  else
    die "missing system packages: ${missing[*]}
  install them, then run this script again:
  sudo apt-get update && sudo apt-get install -y ${missing[*]}"
  fi
}

_python_ok() {
  "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1
}

_find_python() {
  local candidate
  for candidate in "${PYTHON:-}" python3 python3.13 python3.12 python3.11 python; do
    [[ -n "$candidate" ]] || continue
    if command -v "$candidate" >/dev/null 2>&1 && _python_ok "$candidate"; then
      command -v "$candidate"
      return 0
    fi
  done
  return 1
}

_create_venv() {
  local python
  python="$(_find_python)" || die "Python >= 3.11 is needed (set PYTHON=/path/to/python3.11+)"
  log "creating $VENV with $python ($("$python" --version 2>&1))"
  rm -rf "$VENV"
  if ! "$python" -m venv "$VENV"; then
    rm -rf "$VENV"
    # Debian/Ubuntu ship venv separately.
    if _is_root && command -v apt-get >/dev/null 2>&1; then
      local version
      version="$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
      _apt_install "python${version}-venv" || _apt_install python3-venv
      "$python" -m venv "$VENV" || die "could not create $VENV"
    else
      die "could not create $VENV; install the venv module (Debian: apt-get install python3-venv)"
    fi
  fi
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip \
    || die "could not upgrade pip in $VENV"
}

# _extras_list "a,b c": the extras as one sorted, comma-separated list without duplicates.
_extras_list() {
  tr ', ' '\n\n' <<<"$1" | sed '/^$/d' | sort -u | paste -s -d, -
}

# _extras_cover HAVE WANT: true when every extra in WANT is in HAVE (comma-separated lists).
_extras_cover() {
  local extra
  for extra in $(printf '%s' "$2" | tr ',' ' '); do
    [[ ",$1," == *",$extra,"* ]] || return 1
  done
}

# ensure_venv EXTRAS: reuse $VENV when it has a working Python >= 3.11, else create it; then
# install the project in editable mode with EXTRAS, unless an earlier install into $VENV
# with the same pyproject.toml, napari.yaml and pip arguments already had EXTRAS (or more):
# the stamp file records that install's fingerprint and every extra installed since.
ensure_venv() {
  local extras
  extras="$(_extras_list "$1")"
  if [[ -x "$VENV/bin/python" ]] && _python_ok "$VENV/bin/python"; then
    log "reusing $VENV"
  else
    _create_venv
  fi
  local stamp="$VENV/.napari-sam-lora-install"
  local fingerprint installed=""
  fingerprint="$(cat "$REPO_ROOT/pyproject.toml" "$REPO_ROOT/napari.yaml" | cksum)"
  fingerprint="$fingerprint ${NAPARI_SAM_LORA_PIP_ARGS:-}"
  if [[ -f "$stamp" && "$(sed -n 1p "$stamp")" == "$fingerprint" ]]; then
    installed="$(sed -n 2p "$stamp")"
  fi
  if [[ "${NAPARI_SAM_LORA_REINSTALL:-0}" != 1 && -n "$installed" ]] \
    && _extras_cover "$installed" "$extras" \
    && "$VENV/bin/python" -c 'import napari_sam_lora' >/dev/null 2>&1; then
    log "napari-sam-lora[$extras] already installed in $VENV (with [$installed];" \
      "NAPARI_SAM_LORA_REINSTALL=1 to redo)"
    return 0
  fi
  log "installing napari-sam-lora[$extras] into $VENV (torch is large: this takes minutes)"
  rm -f "$stamp" "$VENV"/.napari-sam-lora-installed-*  # (older scripts' stamps)
  # shellcheck disable=SC2086  # NAPARI_SAM_LORA_PIP_ARGS is a list of words on purpose
  "$VENV/bin/python" -m pip install --disable-pip-version-check --progress-bar off \
    ${NAPARI_SAM_LORA_PIP_ARGS:-} -e "${REPO_ROOT}[${extras}]" \
    || die "pip install failed (see above)"
  # Extras installed earlier from the same files are still there: pip removes nothing.
  printf '%s\n%s\n' "$fingerprint" "$(_extras_list "$installed,$extras")" >"$stamp"
}
