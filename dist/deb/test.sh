#!/usr/bin/env bash
# Checks a built hv-vss .deb: its file list (dpkg-deb -c), then dpkg -i, dpkg -r and
# dpkg -P on this machine (as root). Where systemd is not PID 1 the maintainer scripts
# start nothing. Usage: dist/deb/test.sh target/debian/hv-vss_*.deb
set -euo pipefail
deb=${1:?usage: $0 PATH.deb}
fail() { echo "deb test: FAIL: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "needs root (dpkg -i)"

echo "== dpkg-deb -c $deb"
list=$(dpkg-deb -c "$deb" | awk '{print $6}' | sed 's#^\./#/#')
for f in \
    /usr/sbin/hv-vssd /usr/bin/hv-vss \
    /lib/systemd/system/hv-vssd.service /lib/systemd/system/hv-vssd-uio.service \
    /lib/udev/rules.d/70-hv-vss.rules /etc/hv-vss/hv-vss.toml \
    /usr/share/man/man1/hv-vss.1.gz /usr/share/man/man1/hv-vss-simulate.1.gz \
    /usr/share/man/man1/hv-vss-status.1.gz /usr/share/man/man1/hv-vss-history.1.gz \
    /usr/share/man/man1/hv-vss-metrics.1.gz /usr/share/man/man1/hv-vss-thaw.1.gz \
    /usr/share/man/man8/hv-vssd.8.gz /usr/share/man/man5/hv-vss.toml.5.gz \
    /usr/share/bash-completion/completions/hv-vss \
    /usr/share/zsh/vendor-completions/_hv-vss \
    /usr/share/fish/vendor_completions.d/hv-vss.fish \
    /usr/share/doc/hv-vss/operations.md /usr/share/doc/hv-vss/install.md; do
    grep -qx "$f" <<<"$list" || fail "$f is not in the package"
done
conffiles=$(dpkg-deb -I "$deb" conffiles)
[ "$conffiles" = /etc/hv-vss/hv-vss.toml ] || fail "conffiles: $conffiles"
for s in postinst prerm postrm; do
    dpkg-deb -I "$deb" "$s" >/dev/null || fail "no $s"
done

stock="hypervvssd.service hv-vss-daemon.service hv_vss_daemon.service"
units=/etc/systemd/system
mkdir -p "$units"
# An admin's own mask (made before install) must survive install and purge.
admin_mask="$units/hv_vss_daemon.service"
admin_made=0
if [ ! -e "$admin_mask" ] && [ ! -L "$admin_mask" ]; then
    ln -s /dev/null "$admin_mask"
    admin_made=1
fi
cleanup() {
    dpkg -P hv-vss >/dev/null 2>&1 || true
    if [ "$admin_made" = 1 ]; then rm -f "$admin_mask"; fi
}
trap cleanup EXIT

echo "== dpkg -i"
dpkg -i "$deb"
/usr/bin/hv-vss --version
/usr/sbin/hv-vssd --version
# The installed binaries are stripped; their symbols are in the -dbgsym package beside the
# .deb, under the build id each binary names (what gdb and systemd-coredump look up).
ddeb=$(dirname "$deb")/$(basename "$deb" .deb | sed 's/^hv-vss_/hv-vss-dbgsym_/').ddeb
[ -f "$ddeb" ] || fail "no debug symbol package $ddeb"
ddeb_list=$(dpkg-deb -c "$ddeb" | awk '{print $6}')
for bin in /usr/sbin/hv-vssd /usr/bin/hv-vss; do
    readelf -S --wide "$bin" | grep -q '\.debug_info' && fail "$bin is not stripped"
    id=$(readelf -n "$bin" | awk '/Build ID:/ {print $3}')
    [ -n "$id" ] || fail "$bin has no build id"
    grep -q "/usr/lib/debug/.build-id/${id:0:2}/${id:2}.debug" <<<"$ddeb_list" ||
        fail "no symbols for $bin (build id $id) in $ddeb"
done
[ -f /etc/hv-vss/hv-vss.toml ] || fail "no /etc/hv-vss/hv-vss.toml"
for u in hypervvssd.service hv-vss-daemon.service; do
    [ "$(readlink "$units/$u")" = /dev/null ] || fail "$u is not masked after install"
done
grep -qx hv_vss_daemon.service /var/lib/hv-vss/masked-units 2>/dev/null &&
    fail "the admin's own mask was recorded as ours"
if [ ! -d /run/systemd/system ]; then
    # Only the installed binary counts: test daemons of other runs may be about.
    for pid in $(pgrep -x hv-vssd); do
        if [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = /usr/sbin/hv-vssd ]; then
            fail "hv-vssd was started without systemd"
        fi
    done
fi

echo "== dpkg -r"
dpkg -r hv-vss
[ ! -e /usr/sbin/hv-vssd ] || fail "/usr/sbin/hv-vssd left after remove"
[ -f /etc/hv-vss/hv-vss.toml ] || fail "the conffile went on remove (kept until purge)"
[ "$(readlink "$units/hypervvssd.service")" = /dev/null ] || fail "mask gone on remove (kept until purge)"

echo "== dpkg -P"
dpkg -P hv-vss
for u in hypervvssd.service hv-vss-daemon.service; do
    [ ! -L "$units/$u" ] || fail "$u still masked after purge"
done
[ "$(readlink "$admin_mask")" = /dev/null ] || fail "the admin's own mask was removed"
[ ! -e /etc/hv-vss/hv-vss.toml ] || fail "/etc/hv-vss/hv-vss.toml left after purge"
echo "deb test: OK"
