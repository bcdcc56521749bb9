#!/usr/bin/env bash
# Build lifecycled_<version>_<arch>.deb: the daemon in its own virtual environment under
# /opt/lifecycled, built with the distribution's own python3 (Debian 12 / PVE 8: 3.11,
# Debian 13 / PVE 9: 3.13). Build on the release you install on: the venv's compiled
# dependencies (aiohttp, cryptography, …) are for that release's Python.
#
#   packaging/deb/build.sh dist/lifecycled-<version>-py3-none-any.whl [OUTDIR]
set -euo pipefail

wheel=${1:?usage: build.sh WHEEL [OUTDIR]}
outdir=${2:-dist}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
python=$(readlink -f "${DEB_PYTHON:-/usr/bin/python3}")
prefix=/opt/lifecycled

"$python" -c 'import venv, ensurepip' 2>/dev/null || {
    echo "build.sh: $python lacks venv/ensurepip (apt-get install python3-venv)" >&2; exit 1; }
command -v dpkg-deb >/dev/null || { echo "build.sh: dpkg-deb not found" >&2; exit 1; }

pyver=$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
pkgver=$("$python" - "$wheel" <<'PY'
import re, sys, pathlib
name = pathlib.Path(sys.argv[1]).name
version = name.split("-")[1]
# PEP 440 pre/dev releases sort before the release: Debian spells that with "~".
print(re.sub(r"\.?(dev|a|b|rc)(\d+)", r"~\1\2", version))
PY
)
arch=$(dpkg --print-architecture)
stage=$(mktemp -d "${TMPDIR:-/tmp}/lifecycled-deb.XXXXXX")
trap 'rm -rf "$stage"' EXIT
pkgroot=$stage/root

# The venv is created at its staging path, then every absolute staging path in it (script
# shebangs, activate scripts) is rewritten to /opt/lifecycled. bin/python stays a symlink to
# the system interpreter, which the package depends on.
"$python" -m venv "$pkgroot$prefix"
"$pkgroot$prefix/bin/python" -m pip install --quiet --disable-pip-version-check \
    --no-compile "$wheel"
"$pkgroot$prefix/bin/python" -m pip uninstall --quiet --yes pip setuptools 2>/dev/null \
    || "$pkgroot$prefix/bin/python" -m pip uninstall --quiet --yes pip
find "$pkgroot$prefix" -name __pycache__ -type d -prune -exec rm -rf {} +
grep -rlF "$pkgroot$prefix" "$pkgroot$prefix/bin" "$pkgroot$prefix/pyvenv.cfg" | while read -r f; do
    sed -i "s#$pkgroot$prefix#$prefix#g" "$f"
done
if grep -rqF "$stage" "$pkgroot$prefix"; then
    echo "build.sh: staging path left in the venv:" >&2
    grep -rlF "$stage" "$pkgroot$prefix" >&2
    exit 1
fi

install -d "$pkgroot/usr/bin" "$pkgroot/lib/systemd/system" "$pkgroot/etc/lifecycled" \
    "$pkgroot/usr/share/doc/lifecycled"
ln -s "$prefix/bin/lifecycled" "$pkgroot/usr/bin/lifecycled"
install -m 0644 "$root/examples/lifecycled.service" "$pkgroot/lib/systemd/system/lifecycled.service"
install -m 0640 "$root/examples/lifecycled.toml" "$pkgroot/etc/lifecycled/lifecycled.toml"
install -m 0644 "$root/README.md" "$root/CHANGELOG.md" "$pkgroot/usr/share/doc/lifecycled/"
install -m 0644 "$root/LICENSE" "$pkgroot/usr/share/doc/lifecycled/copyright"

install -d "$pkgroot/DEBIAN"
installed_size=$(du -sk --exclude=DEBIAN "$pkgroot" | cut -f1)
sed -e "s/@VERSION@/$pkgver/" -e "s/@ARCH@/$arch/" -e "s/@PYVER@/$pyver/" \
    -e "s/@SIZE@/$installed_size/" "$here/control.in" > "$pkgroot/DEBIAN/control"
install -m 0644 "$here/conffiles" "$pkgroot/DEBIAN/conffiles"
for script in postinst prerm postrm; do
    install -m 0755 "$here/$script" "$pkgroot/DEBIAN/$script"
done

mkdir -p "$outdir"
out="$outdir/lifecycled_${pkgver}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$pkgroot" "$out" >/dev/null
echo "$out"
