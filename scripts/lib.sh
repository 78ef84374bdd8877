# Helpers sourced by the scripts.
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_install() {
  # Install the Debian packages that are missing; quiet unless something goes wrong.
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing ${missing[*]} with apt-get" >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}
install_s3rver() {
  # s3rver, the second S3 implementation (tests and `scripts/bench ingest --s3 s3rver`); needs npm.
  command -v npm >/dev/null || { echo "npm is missing: s3rver cannot be installed" >&2; return 1; }
  [ -x tests/.s3rver/node_modules/.bin/s3rver ] && return 0
  npm install --silent --no-audit --no-fund --prefix tests/.s3rver s3rver@3.7.1 >/dev/null ||
    { echo "npm could not install s3rver" >&2; return 1; }
}
