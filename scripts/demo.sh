#!/usr/bin/env bash
# demo.sh: a guided tour of txnkit on a local cluster.
#
# Usage: scripts/demo.sh [--release]
#
# Brings a cluster up (in .cluster/demo, ports 52051..), runs transfers under 2PC and as a
# saga, kills the coordinator right after a commit decision is durable (a failpoint), shows
# the in-doubt txn the participants are left holding, restarts the coordinator, shows the txn
# resolved, verifies the bank total, and brings the cluster down.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="$ROOT/.cluster/demo"
PORT=52051
PROFILE=debug
[[ "${1:-}" == "--release" ]] && PROFILE=release
CLUSTER=("$ROOT/scripts/cluster.sh" --dir "$DIR")
TXNCTL="$ROOT/target/$PROFILE/txnctl"
export TXNCTL_COORDINATOR="http://127.0.0.1:$PORT"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }
cleanup() { "${CLUSTER[@]}" wipe >/dev/null 2>&1 || true; }
trap cleanup EXIT

cleanup
step "Start a cluster: one coordinator, three participants"
flags=(--base-port "$PORT")
[[ "$PROFILE" == release ]] && flags+=(--release)
"${CLUSTER[@]}" up "${flags[@]}"

step "Open accounts: alice on p1 and carol on p3 get 100 each (one 2PC transaction)"
run "$TXNCTL" submit - <<'JSON'
{"protocol": "2pc", "branches": [
  {"participant": "p1", "ops": [{"put": {"key": "alice", "value": "100"}}]},
  {"participant": "p3", "ops": [{"put": {"key": "carol", "value": "100"}}]}]}
JSON

step "A transfer under two-phase commit, one as a saga, and an overdraft that must abort"
run "$TXNCTL" transfer --from p1/alice --to p2/bob --amount 30
run "$TXNCTL" transfer --from p3/carol --to p2/bob --amount 20 --protocol saga
run "$TXNCTL" transfer --from p1/alice --to p2/bob --amount 1000 || echo "(exit status $?: aborted, as it must)"
run "$TXNCTL" read p1/alice p2/bob p3/carol

step "Arm a crash right after the coordinator's commit decision is durable, then transfer"
run "$TXNCTL" failpoint set coordinator coordinator::after_decision_durable crash
run "$TXNCTL" transfer --from p1/alice --to p3/carol --amount 5 || echo "(the coordinator died mid-transaction, as planned)"
for _ in $(seq 1 50); do
  "${CLUSTER[@]}" status | grep -q '^coordinator .*stopped' && break
  sleep 0.1
done
"${CLUSTER[@]}" status

step "Both participants voted YES and now hold the txn in doubt, locks and all"
run "$TXNCTL" participant in-doubt "http://127.0.0.1:$((PORT + 10))"
run "$TXNCTL" participant in-doubt "http://127.0.0.1:$((PORT + 12))"
TXN="$("$TXNCTL" participant in-doubt "http://127.0.0.1:$((PORT + 10))" --json \
  | sed -n 's/.*"txn_id": "\([^"]*\)".*/\1/p' | head -n1)"

step "Restart the coordinator: it reloads its decision and re-sends Commit"
"${CLUSTER[@]}" restart coordinator
for _ in $(seq 1 50); do
  [[ "$("$TXNCTL" status --json | sed -n 's/.*"txns_in_doubt": \([0-9]*\).*/\1/p')" == 0 ]] && break
  sleep 0.2
done
run "$TXNCTL" txn show "$TXN"

step "Every transfer is applied exactly once: the bank still holds 200"
run "$TXNCTL" read p1/alice p2/bob p3/carol
total=0
for v in $("$TXNCTL" read p1/alice p2/bob p3/carol --json | sed -n 's/.*"value": "\(-\{0,1\}[0-9]*\)".*/\1/p'); do
  total=$((total + v))
done
echo "total: $total"
[[ "$total" == 200 ]] || { echo "demo: the total is $total, expected 200" >&2; exit 1; }

step "Bring the cluster down"
"${CLUSTER[@]}" down
echo
echo "demo finished: the coordinator crashed after deciding, and no money was lost."
