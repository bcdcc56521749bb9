#!/usr/bin/env bash
# Install the built .deb on this machine (root), run it, purge it, and check that purge left
# nothing behind. Used by `make deb-check` (CI runs it).
set -euo pipefail
deb=${1:?usage: check.sh PACKAGE.deb}
[ "$(id -u)" = 0 ] || { echo "check.sh: must run as root (it installs the package)" >&2; exit 1; }
case $deb in /*) ;; *) deb=./$deb ;; esac

if dpkg -s lifecycled >/dev/null 2>&1; then
    echo "check.sh: lifecycled is already installed here; refusing to touch it" >&2; exit 1
fi
cleanup() { dpkg --purge lifecycled >/dev/null 2>&1 || true; }
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q --no-install-recommends "$deb" >/dev/null

fail() { echo "deb-check: FAIL: $*" >&2; exit 1; }
ok() { echo "deb-check: ok: $*"; }

[ -L /usr/bin/lifecycled ] || fail "/usr/bin/lifecycled missing"
version=$(/usr/bin/lifecycled --version) || fail "lifecycled --version"
ok "$version"
/usr/bin/lifecycled doctor --help >/dev/null || fail "lifecycled doctor --help"
ok "lifecycled doctor --help"
getent passwd lifecycled >/dev/null || fail "system user lifecycled not created"
[ "$(stat -c '%U %a' /var/lib/lifecycled)" = "lifecycled 700" ] || fail "/var/lib/lifecycled owner/mode"
ok "user lifecycled and /var/lib/lifecycled (0700)"
[ "$(stat -c '%U:%G %a' /etc/lifecycled/lifecycled.toml)" = "root:lifecycled 640" ] \
    || fail "/etc/lifecycled/lifecycled.toml owner/mode"
dpkg-query -W -f='${Conffiles}\n' lifecycled | grep -q /etc/lifecycled/lifecycled.toml \
    || fail "lifecycled.toml is not a conffile"
ok "conffile /etc/lifecycled/lifecycled.toml (root:lifecycled 0640)"
grep -q '^ExecStart=/usr/bin/lifecycled run' /lib/systemd/system/lifecycled.service \
    || fail "unit ExecStart"
if command -v systemd-analyze >/dev/null; then
    systemd-analyze verify /lib/systemd/system/lifecycled.service 2>&1 \
        | grep -v -e 'Failed to .*credential' -e 'Cannot add dependency' \
        | grep . && fail "systemd-analyze verify" || true
fi
ok "systemd unit installed (disabled)"
# The packaged daemon runs as the service user against a journal of its own.
runuser -u lifecycled -- /usr/bin/lifecycled db migrate --db /var/lib/lifecycled/check.sqlite3 \
    >/dev/null || fail "lifecycled db migrate as the service user"
[ "$(stat -c '%a' /var/lib/lifecycled/check.sqlite3)" = 600 ] || fail "journal mode"
ok "journal created by the service user (0600)"

dpkg --purge lifecycled >/dev/null
for path in /opt/lifecycled /usr/bin/lifecycled /etc/lifecycled /var/lib/lifecycled \
    /lib/systemd/system/lifecycled.service; do
    [ ! -e "$path" ] || fail "$path left after purge"
done
! getent passwd lifecycled >/dev/null || fail "user left after purge"
ok "purged: nothing left"
