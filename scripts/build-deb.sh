#!/usr/bin/env bash
# Build dist/reflector-appliance_<version>_<arch>.deb from this checkout: a self-contained venv built at its
# final path /opt/reflector-appliance/venv with Debian's python3 (the real /opt is not touched, see
# packaging/build-venv.sh), the hardened unit, the config as conffiles and the maintainer scripts.
# Install it with `apt install ./dist/reflector-appliance_*.deb`. DIST_DIR: another output directory.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

NAME=reflector-appliance
PYTHON=${PYTHON:-/usr/bin/python3}
export PYTHON

command -v dpkg-shlibdeps >/dev/null || apt_install dpkg-dev
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv

version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' appliance/__init__.py)
arch=$(dpkg --print-architecture)
pyver=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
pynext=$("$PYTHON" -c 'import sys; print("%d.%d" % (sys.version_info[0], sys.version_info[1] + 1))')
dist=${DIST_DIR:-dist}
deb="$dist/${NAME}_${version}_${arch}.deb"

work=$(mktemp -d "${TMPDIR:-/tmp}/$NAME-deb.XXXXXX")
trap 'rm -rf "$work"' EXIT
pkg=$work/pkg

echo "build-deb: building the venv at /opt/$NAME/venv with $PYTHON ($pyver)" >&2
packaging/build-venv.sh . "$pkg/opt/$NAME"

install -D -m 0644 systemd/$NAME.service "$pkg/lib/systemd/system/$NAME.service"
install -D -m 0644 config/reflector-appliance.toml "$pkg/etc/$NAME/config.toml"
install -D -m 0640 config/secrets.toml.example "$pkg/etc/$NAME/secrets.toml"
install -D -m 0644 config/config.json "$pkg/usr/share/doc/$NAME/examples/config.json"
install -D -m 0644 README.md "$pkg/usr/share/doc/$NAME/README.md"
# What operators import (HAProxy fleet config, Prometheus rules, Grafana dashboard): not conffiles, copy them.
(cd deploy && find . -type f -print0) | while IFS= read -r -d '' f; do
  install -D -m 0644 "deploy/$f" "$pkg/usr/share/$NAME/${f#./}"
done
mkdir -p "$pkg/usr/bin"
ln -s /opt/$NAME/venv/bin/prism "$pkg/usr/bin/prism"
ln -s /opt/$NAME/venv/bin/appliancectl "$pkg/usr/bin/appliancectl"

# The shared libraries the venv's compiled wheels link against, with their minimum versions.
mkdir -p "$work/shlibs/debian"
printf 'Source: %s\n\nPackage: %s\nArchitecture: any\n' "$NAME" "$NAME" > "$work/shlibs/debian/control"
mapfile -d '' sofiles < <(find "$pkg/opt" -type f -name '*.so*' -print0)
shlibs=$(cd "$work/shlibs" && dpkg-shlibdeps -O "${sofiles[@]}" 2>"$work/shlibdeps.log" \
  | sed -n 's/^shlibs:Depends=//p') || { cat "$work/shlibdeps.log" >&2; exit 1; }
# The venv is tied to this interpreter's minor version (its ABI and site-packages path).
depends="python3 (>= $pyver), python3 (<< $pynext), passwd${shlibs:+, $shlibs}"

mkdir -p "$pkg/DEBIAN"
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@DEPENDS@/$depends/" \
  -e "s/@INSTALLED_SIZE@/$(du -sk --exclude=DEBIAN "$pkg" | cut -f1)/" packaging/control.in > "$pkg/DEBIAN/control"
install -m 0644 packaging/conffiles "$pkg/DEBIAN/conffiles"
install -m 0755 packaging/postinst packaging/prerm packaging/postrm "$pkg/DEBIAN/"

mkdir -p "$dist"
partial="$dist/.$NAME.$$.deb"  # renamed when complete: never half a package under the final name
trap 'rm -rf "$work" "$partial"' EXIT
# zstd (Debian 12's dpkg and apt read it): under a second here, where gzip takes 15 s and xz 40 s.
dpkg-deb --root-owner-group -Zzstd --build "$pkg" "$partial" >/dev/null
mv "$partial" "$deb"
echo "$deb"
