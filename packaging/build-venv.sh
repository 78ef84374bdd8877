#!/usr/bin/env bash
# Build the appliance's virtualenv AT ITS FINAL PATH, /opt/reflector-appliance/venv (so every script's
# shebang and every .pyc path is right), without touching the real /opt: in a private mount namespace /opt
# is an overlay whose writes land in a scratch directory. An installed appliance is neither used nor
# clobbered, and several builds can run at once.
# Usage: packaging/build-venv.sh SOURCE_DIR OUTPUT_DIR   -> OUTPUT_DIR/venv, a copy of the built venv
#        packaging/build-venv.sh --hash SOURCE_DIR         -> a hash of the interpreter and of the sources
# PYTHON: the interpreter the venv is tied to (default Debian's /usr/bin/python3).
set -euo pipefail

FINAL=/opt/reflector-appliance/venv
SELF=$(realpath "$0")
PYTHON=${PYTHON:-/usr/bin/python3}

# The files the wheel is made of, NUL-separated, relative to the current directory.
source_files() {
  local parts=() part
  for part in setup.py setup.cfg pyproject.toml MANIFEST.in README.md appliance workers; do
    if [ -e "$part" ]; then parts+=("$part"); fi
  done
  find "${parts[@]}" -name __pycache__ -prune -o \( -type f ! -name '*.pyc' -print0 \) | sort -z
}

if [ "${1:-}" = --hash ]; then
  if [ $# -ne 2 ]; then echo "usage: $0 --hash SOURCE_DIR" >&2; exit 2; fi
  cd "$2"
  { "$PYTHON" --version; source_files | xargs -0 sha256sum; } | sha256sum | cut -d' ' -f1
  exit 0
fi

if [ "${_BUILD_VENV_NAMESPACE:-}" != 1 ]; then
  if [ $# -ne 2 ]; then echo "usage: $0 SOURCE_DIR OUTPUT_DIR" >&2; exit 2; fi
  src=$(realpath "$1")
  out=$(realpath -m "$2")
  scratch=$(mktemp -d "${TMPDIR:-/tmp}/reflector-venv.XXXXXX")
  trap 'rm -rf "$scratch"' EXIT
  mkdir "$scratch/upper" "$scratch/work" "$scratch/src"
  # pip builds in the source tree (build/, *.egg-info): build from a copy of what the wheel is made of.
  (cd "$src" && source_files | xargs -0 cp --parents -t "$scratch/src")
  namespace=(unshare --mount --propagation private)
  # Without root, a user namespace maps us to root in it, which may mount an overlay (Linux >= 5.11).
  [ "$(id -u)" = 0 ] || namespace=(unshare --user --map-root-user --mount --propagation private)
  # What `prism version` prints: the installed venv has no git checkout to ask.
  git_or_unknown() { git -C "$src" "$@" 2>/dev/null || echo unknown; }
  BUILD_INFO=$(printf '{"branch": "%s", "commit": "%s", "commit long": "%s", "build date": "%s"}' \
    "$(git_or_unknown rev-parse --abbrev-ref HEAD)" "$(git_or_unknown rev-parse --short=7 HEAD)" \
    "$(git_or_unknown rev-parse HEAD)" "$(date -u '+%Y-%m-%d %H:%M:%S +0000 UTC')")
  export BUILD_INFO
  _BUILD_VENV_NAMESPACE=1 "${namespace[@]}" "$SELF" "$scratch/src" "$out" "$scratch"
  exit 0
fi

# --- inside the private mount namespace ---------------------------------------------------------------
src=$1 out=$2 scratch=$3
umask 022
mount -t overlay overlay -o "lowerdir=/opt,upperdir=$scratch/upper,workdir=$scratch/work" /opt
rm -rf /opt/reflector-appliance  # a whiteout in the overlay only: an installed appliance stays as it is
"$PYTHON" -m venv "$FINAL"
if ! "$FINAL/bin/pip" install --no-warn-script-location "$src" >"$scratch/pip.log" 2>&1; then
  cat "$scratch/pip.log" >&2
  echo "build-venv: pip install failed (log above)" >&2
  exit 1
fi
rm -rf "$out/venv"
mkdir -p "$out"
cp -a "$FINAL" "$out/venv"
printf '%s\n' "${BUILD_INFO:-{\}}" > "$out/venv/build-info.json"
