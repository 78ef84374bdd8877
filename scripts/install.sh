#!/usr/bin/env bash
# Install the appliance from this checkout as a systemd service on Debian 12 (run as root): the `reflector`
# user and its directories, a venv in /opt/reflector-appliance/venv, the config in /etc/reflector-appliance
# (an edited config is never overwritten) and the unit in /etc/systemd/system. Running it again changes
# nothing unless the checkout changed. The .deb (scripts/build-deb.sh) installs the same thing via apt.
#
# Usage: scripts/install.sh [--root DIR] [--uninstall [--purge]]
#   --root DIR    install into DIR instead of / (also DESTDIR=DIR); systemd is then left alone
#   --uninstall   remove the code, the unit and the user; keep data (/var/lib, /var/cache, /var/log) and config
#   --purge       with --uninstall: remove data and config too
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

NAME=reflector-appliance
SVC=reflector
PYTHON=${PYTHON:-/usr/bin/python3}
export PYTHON

usage() { sed -n '/^# Usage/,/^set -e/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; }
fail() { echo "install.sh: $1" >&2; exit "${2:-1}"; }
say() { echo "install.sh: $*"; }

ROOT=${DESTDIR:-}
action=install
purge=0
while [ $# -gt 0 ]; do
  case "$1" in
    --root) [ $# -ge 2 ] || fail "--root needs a directory" 2; ROOT=$2; shift 2 ;;
    --root=*) ROOT=${1#--root=}; shift ;;
    --uninstall) action=uninstall; shift ;;
    --purge) purge=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) fail "unknown argument '$1' (see --help)" 2 ;;
  esac
done
[ $purge = 0 ] || [ $action = uninstall ] || fail "--purge goes with --uninstall" 2
[ "$(id -u)" = 0 ] || fail "run as root (sudo $0)" 2
if [ -n "$ROOT" ]; then
  [ -d "$ROOT" ] || fail "--root $ROOT: no such directory" 2
  ROOT=$(realpath "$ROOT")
  [ "$ROOT" != / ] || ROOT=""
fi
# The maintainer scripts of the .deb do the user, directories and systemd parts, for both paths.
export DPKG_ROOT=$ROOT

OPT=$ROOT/opt/$NAME
ETC=$ROOT/etc/$NAME
UNIT=$ROOT/etc/systemd/system/$NAME.service
STAMP=$OPT/.installed  # "VERSION SOURCE-HASH" of the installed venv
BINDIR=$ROOT/usr/local/bin
shadow_prefix=()
[ -z "$ROOT" ] || shadow_prefix=(--prefix "$ROOT")

if [ -z "$ROOT" ] && dpkg-query -W -f '${Status}' $NAME 2>/dev/null | grep -q ' installed$'; then
  fail "the $NAME package is installed here; upgrade or remove it with apt instead"
fi

# Copy SRC to DEST with MODE unless DEST already has that content; atomic (a temp file renamed).
put() {
  local src=$1 dest=$2 mode=$3
  if cmp -s "$src" "$dest"; then return 0; fi
  mkdir -p "$(dirname "$dest")"
  install -m "$mode" "$src" "$dest.new.$$"
  mv -f "$dest.new.$$" "$dest"
  say "installed ${dest#"$ROOT"}"
}

link() {  # link TARGET PATH, unless it already points there
  if [ "$(readlink "$2" 2>/dev/null)" = "$1" ]; then return 0; fi
  mkdir -p "$(dirname "$2")"
  ln -sfn "$1" "$2"
}

uninstall() {
  packaging/prerm remove
  rm -f "$UNIT" "$ROOT"/etc/systemd/system/*.wants/$NAME.service "$BINDIR/prism" "$BINDIR/appliancectl"
  rm -rf "$ROOT/usr/share/$NAME"
  packaging/postrm remove  # removes $OPT, reloads systemd
  if [ $purge = 1 ]; then
    packaging/postrm purge
    say "removed the appliance, its data, its config and the $SVC user"
  else
    if grep -q "^$SVC:" "$ROOT/etc/passwd"; then userdel "${shadow_prefix[@]}" $SVC; fi
    if grep -q "^$SVC:" "$ROOT/etc/group"; then groupdel "${shadow_prefix[@]}" $SVC; fi
    say "removed the appliance and the $SVC user; kept /etc/$NAME, /var/lib/$NAME, /var/cache/$NAME" \
        "and /var/log/$NAME (scripts/install.sh --uninstall --purge removes them)"
  fi
}

install_venv() {
  local version hash previous tmp
  version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' appliance/__init__.py)
  hash=$(packaging/build-venv.sh --hash .)
  previous=$(cat "$STAMP" 2>/dev/null || true)
  if [ "$previous" = "$version $hash" ] && [ -x "$OPT/venv/bin/prism" ]; then
    say "/opt/$NAME/venv is up to date ($version)"
    return 0
  fi
  "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv
  say "building the venv in /opt/$NAME/venv with $PYTHON"
  mkdir -p "$OPT"
  tmp=$(mktemp -d "$OPT/.build.XXXXXX")  # beside the venv: the swap below is two renames
  packaging/build-venv.sh . "$tmp"
  # Like dpkg's upgrade: stop the service while its code is replaced (postinst starts it again).
  if [ -n "$previous" ]; then packaging/prerm upgrade; fi
  if [ -d "$OPT/venv" ]; then mv "$OPT/venv" "$tmp/old"; fi
  mv "$tmp/venv" "$OPT/venv"
  rm -rf "$tmp"
  echo "$version $hash" > "$STAMP.new"
  mv "$STAMP.new" "$STAMP"
  say "installed /opt/$NAME/venv ($version)"
  upgraded_from=${previous%% *}
}

install_config() {
  mkdir -p "$ETC"
  if [ ! -e "$ETC/config.toml" ]; then
    put config/reflector-appliance.toml "$ETC/config.toml" 0644
  elif ! cmp -s config/reflector-appliance.toml "$ETC/config.toml"; then
    put config/reflector-appliance.toml "$ETC/config.toml.dist-new" 0644
    say "kept your edited /etc/$NAME/config.toml; this version's default is /etc/$NAME/config.toml.dist-new"
  fi
  # Secrets: mode 0640, group reflector (set by postinst); never replaced once there.
  if [ ! -e "$ETC/secrets.toml" ]; then
    put config/secrets.toml.example "$ETC/secrets.toml" 0640
  fi
}

install_deploy() {  # what operators import: HAProxy config, Prometheus rules, Grafana dashboard (as the .deb)
  local f
  while IFS= read -r -d '' f; do
    put "deploy/$f" "$ROOT/usr/share/$NAME/${f#./}" 0644
  done < <(cd deploy && find . -type f -print0)
}

next_steps() {
  local where=""
  [ -z "$ROOT" ] || where=" (installed under $ROOT)"
  cat <<EOF

The reflector appliance is installed$where. Next steps:
  1. Edit /etc/$NAME/config.toml; put S3 keys and the DB password in /etc/$NAME/secrets.toml.
     Check it: /opt/$NAME/venv/bin/python -m appliance.configfile --check /etc/$NAME/config.toml
  2. Start it now and at boot:  systemctl enable --now $NAME
  3. See it running:            appliancectl status
  4. Metrics:                   curl -s http://localhost:2112/metrics
     Prometheus rules, Grafana dashboard, HAProxy fleet config: /usr/share/$NAME/
  Logs: journalctl -u $NAME -f     Uninstall: scripts/install.sh --uninstall [--purge]
EOF
}

if [ $action = uninstall ]; then
  uninstall
  exit 0
fi

upgraded_from=""
install_venv
put systemd/$NAME.service "$UNIT" 0644
install_config
install_deploy
link /opt/$NAME/venv/bin/prism "$BINDIR/prism"
link /opt/$NAME/venv/bin/appliancectl "$BINDIR/appliancectl"
packaging/postinst configure "$upgraded_from"
next_steps
