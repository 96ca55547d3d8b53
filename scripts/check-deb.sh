#!/usr/bin/env bash
# Builds the .deb for this machine and inspects it: every file at its path with its mode,
# the conffile, the unit enabled, restarted on upgrade without waiting and stopped on
# remove, and `systemd-analyze verify` on the unit inside.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked --quiet
# cargo deb's progress is kept out of the way, and shown when the build fails.
log=$(mktemp)
deb=$(cargo deb 2>"$log" | tail -n 1) || { cat "$log" >&2; rm -f "$log"; exit 1; }
rm -f "$log"
[ -f "$deb" ] || deb=$(ls -t target/debian/*.deb | head -n 1)
echo "package: $deb"
contents=$(dpkg-deb --contents "$deb")
fail=0
expect() { # mode path
  if ! echo "$contents" | awk '{print $1, $6}' | grep -qx -- "$1 ./$2"; then
    echo "MISSING or wrong mode: $1 $2"; fail=1
  else
    echo "ok: $1 $2"
  fi
}
expect -rwxr-xr-x usr/bin/babycryd
for f in cry-detector.onnx cry-detector.toml cry-reason.onnx cry-reason.toml; do
  expect -rw-r--r-- "usr/share/babycryd/models/$f"
done
expect -rw-r--r-- etc/babycryd/config.toml
expect -rw-r--r-- usr/lib/systemd/system/babycryd.service
info=$(dpkg-deb --info "$deb")
echo "$info" | grep -q "conffiles" || { echo "no conffiles control file"; fail=1; }
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
dpkg-deb --ctrl-tarfile "$deb" | tar -x -C "$work" ./conffiles ./postinst
grep -qx "/etc/babycryd/config.toml" "$work/conffiles" || { echo "config is not a conffile"; fail=1; }
grep -q "deb-systemd-helper enable babycryd.service\|systemctl.*enable" "$work/postinst" || { echo "unit not enabled on install"; fail=1; }
# An upgrade must not wait for the restarted daemon's READY, which needs a microphone.
grep -q "systemctl --no-block try-restart babycryd.service" "$work/postinst" || { echo "upgrade does not restart without waiting"; fail=1; }
if grep -En "(systemctl|deb-systemd-invoke)( [a-z-]+)* (try-)?restart" "$work/postinst" | grep -v -- "--no-block"; then
  echo "upgrade waits for the restarted daemon (no microphone: dpkg hangs)"; fail=1
fi
dpkg-deb --ctrl-tarfile "$deb" | tar -x -C "$work" ./prerm
grep -q 'stop babycryd.service' "$work/prerm" || { echo "remove does not stop the unit"; fail=1; }
mkdir -p "$work/root"
dpkg-deb -x "$deb" "$work/root"
unit="$work/root/usr/lib/systemd/system/babycryd.service"
# verify needs ExecStart to exist: point it at the unpacked binary.
sed "s|/usr/bin/babycryd|$work/root/usr/bin/babycryd|g" "$unit" > "$work/babycryd.service"
if out=$(systemd-analyze verify "$work/babycryd.service" 2>&1) && [ -z "$out" ]; then
  echo "ok: systemd-analyze verify"
else
  echo "systemd-analyze verify: $out"; fail=1
fi
exit $fail
