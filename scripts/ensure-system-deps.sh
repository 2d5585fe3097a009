#!/usr/bin/env bash
# Make sure the system tools the test suite and demo rely on are installed:
#   socat          (serial-path simulator: pseudo-terminal pairs)
#   softhsm2-util  (SoftHSM2, the PKCS#11 HSM used in tests)
#   curl           (the demo's printed curl lines are tested)
#   systemd        (systemd-analyze verify/security, systemd-sysusers and
#                   systemd-tmpfiles: the tests of the units in systemd/)
# Quiet and idempotent when everything is present. As root, installs what is
# missing with apt-get; otherwise prints the command to run and exits 1.
set -euo pipefail

missing=()
command -v socat >/dev/null 2>&1 || missing+=(socat)
command -v softhsm2-util >/dev/null 2>&1 || missing+=(softhsm2-util)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd-analyze)
[ ${#missing[@]} -eq 0 ] && exit 0

echo "ensure-system-deps: missing ${missing[*]}" >&2
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install them with:" >&2
  echo "sudo apt-get install -y socat softhsm2 curl systemd"
  exit 1
fi

apt-get update
DEBIAN_FRONTEND=noninteractive apt-get install -y socat softhsm2 curl systemd

for tool in socat softhsm2-util curl systemd-analyze; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "ensure-system-deps: $tool still missing after apt-get install" >&2
    exit 1
  fi
done
