# Helpers sourced by the scripts.
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_install() {
  # Install the Debian packages that are missing; quiet unless something goes wrong. Nothing installed here
  # may run or listen on the machine: recommends are left out (prometheus's would add node-exporter on :9100),
  # a policy-rc.d keeps the packages' daemons from starting, and on systemd their services are disabled (the
  # tests and benches start their own instances on loopback).
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing ${missing[*]} with apt-get" >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  local policy="${APT_POLICY_RC_D:-/usr/sbin/policy-rc.d}" placed="" status=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# placed by the reflector appliance scripts while they install packages\nexit 101\n' |
      as_root tee "$policy" >/dev/null && as_root chmod 755 "$policy" && placed=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
    >/dev/null || status=$?
  [ -n "$placed" ] && as_root rm -f "$policy"
  [ "$status" -eq 0 ] || return "$status"
  [ -d "${SYSTEMD_RUN_DIR:-/run/systemd/system}" ] || return 0
  local units
  units=$(for pkg in "${missing[@]}"; do dpkg -L "$pkg" 2>/dev/null; done |
          grep -E '^(/usr)?/lib/systemd/system/[^/@]+\.(service|socket|timer)$' | xargs -r -n1 basename | sort -u)
  if [ -n "$units" ]; then
    # shellcheck disable=SC2086  # one unit name per word
    as_root systemctl disable --now --quiet $units >/dev/null 2>&1 || true
    echo "left $(echo $units | tr ' ' ',') stopped and disabled (installed for the tests and benches only)" >&2
  fi
}
install_s3rver() {
  # s3rver, the second S3 implementation (tests and `scripts/bench ingest --s3 s3rver`); needs npm.
  command -v npm >/dev/null || { echo "npm is missing: s3rver cannot be installed" >&2; return 1; }
  [ -x tests/.s3rver/node_modules/.bin/s3rver ] && return 0
  npm install --silent --no-audit --no-fund --prefix tests/.s3rver s3rver@3.7.1 >/dev/null ||
    { echo "npm could not install s3rver" >&2; return 1; }
}
