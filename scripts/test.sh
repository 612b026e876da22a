#!/usr/bin/env bash
# The tests, as the README gives them: `cargo test --workspace` plus what it needs beyond Rust.
# The tests of coordinators over etcd start a real three-member etcd cluster themselves, from
# the `etcd` binary (Debian's etcd-server). If it is missing, this installs it with apt when it
# can (as root, or through sudo), and otherwise says in one line how to get it.
# Arguments go to cargo test (e.g. `scripts/test.sh --locked`, `scripts/test.sh -p txn-tests`).
set -euo pipefail
cd "$(dirname "$0")/.."

have_etcd() { command -v etcd >/dev/null 2>&1 || [[ -x /usr/bin/etcd ]] || [[ -n "${ETCD_BIN:-}" ]]; }

if ! have_etcd; then
  if command -v apt-get >/dev/null 2>&1; then
    sudo=""
    if [[ $(id -u) -ne 0 ]]; then
      if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
        echo "etcd not found: install Debian's etcd-server (apt-get install etcd-server) or set ETCD_BIN" >&2
        exit 1
      fi
    fi
    echo "installing etcd-server (Debian) for the tests of coordinators over etcd"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends etcd-server >/dev/null
    # The package's own service is not wanted: the tests start their own members.
    if command -v systemctl >/dev/null 2>&1; then $sudo systemctl disable --now etcd >/dev/null 2>&1 || true; fi
  else
    echo "etcd not found: install etcd 3.4 or newer (Debian: apt-get install etcd-server) or set ETCD_BIN" >&2
    exit 1
  fi
fi
"${ETCD_BIN:-etcd}" --version 2>/dev/null | head -1 || true
exec cargo test --workspace "$@"
