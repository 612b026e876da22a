#!/usr/bin/env bash
# cluster.sh: run a local txnkit cluster (coordinators, N participants, the read model,
# optionally a three-member etcd cluster for the coordinators' log) and hurt it on purpose.
#
# Usage: scripts/cluster.sh COMMAND [NODE] [OPTIONS]
#
# Commands:
#   up [--participants N] [--base-port PORT] [--release] [--tls] [--etcd] [--coordinators N]
#                        build if needed, start participants p1..pN, the coordinator and the
#                        read model, wait until each answers, print the addresses. Running up
#                        twice starts no duplicates. --tls generates a throwaway CA, a
#                        certificate per node and an admin token in DIR/tls, and runs every link
#                        with mutual TLS and the operator services behind the token. --etcd
#                        starts a three-member etcd cluster (e1, e2, e3, from Debian's
#                        etcd-server) on loopback and keeps the coordinators' log there; with it,
#                        --coordinators N (1..9) starts c1..cN, all serving, each taking over the
#                        txns of any that dies.
#   down                 stop every node (SIGTERM, then SIGKILL after a grace period)
#   status               each node: pid, port, running / paused / stopped
#   kill NODE [--signal SIG]   send SIG (default KILL) to NODE
#   restart NODE         stop NODE if running, start it again, wait until it answers
#   pause NODE           SIGSTOP: alive but silent
#   resume NODE          SIGCONT
#   logs NODE [-f]       print (or follow) NODE's log
#   wipe                 down, then delete the cluster directory (data and logs)
#   env                  print export lines for txnctl (every coordinator's address, the
#                        read model's):
#                        eval "$(scripts/cluster.sh env)"
#
# NODE is coordinator (or c1..cN with --etcd), readmodel, p1..pN, or e1..e3 (etcd members).
# Every command takes --dir DIR (default: .cluster at the repository root) to address the
# cluster that `up --dir DIR` started, before or after NODE. Ports: the coordinator (c1) on the
# base port (default 50051), c2 on base+1, ...; the read model on base+9; p1 on base+10, p2 on
# base+11, ...; etcd member eK serves clients on base+110+K and its peers on base+120+K. They
# are remembered in DIR, so later commands need only --dir.
#
# The binaries are built with failpoints compiled in (unarmed), so scripts/demo.sh and txnctl
# can crash nodes at exact protocol steps. With CLUSTER_NO_BUILD=1 in the environment, up uses
# the binaries already in target/ (as `cargo test` leaves them) and builds nothing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="$ROOT/.cluster"
PARTICIPANTS=3
BASE_PORT=50051
PROFILE=debug
TLS=0
ETCD=0
COORDINATORS=1
# Members of the etcd cluster --etcd starts, and the coordinators' lease TTL over it.
ETCD_MEMBERS=3
LEASE_TTL_SECS=2
SIGNAL=KILL
FOLLOW=0
COMMAND=""
NODE=""
# Seconds to wait for a node to answer after start, and for a clean exit after SIGTERM.
READY_TIMEOUT=30
GRACE=5

die() { echo "cluster.sh: $*" >&2; exit 1; }
usage() { sed -n '2,39p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --dir) DIR="$(realpath -m "${2:?--dir needs a value}")"; shift 2 ;;
    --participants) PARTICIPANTS="${2:?--participants needs a value}"; shift 2 ;;
    --base-port) BASE_PORT="${2:?--base-port needs a value}"; shift 2 ;;
    --release) PROFILE=release; shift ;;
    --tls) TLS=1; shift ;;
    --etcd) ETCD=1; shift ;;
    --coordinators) COORDINATORS="${2:?--coordinators needs a value}"; shift 2 ;;
    --signal) SIGNAL="${2:?--signal needs a value}"; shift 2 ;;
    -f|--follow) FOLLOW=1; shift ;;
    -h|--help|help) usage 0 ;;
    -*) echo "cluster.sh: unknown option $1" >&2; usage 2 ;;
    *) if [[ -z "$COMMAND" ]]; then COMMAND="$1"; elif [[ -z "$NODE" ]]; then NODE="$1"; else die "unexpected argument $1"; fi; shift ;;
  esac
done
[[ -n "$COMMAND" ]] || usage 2
[[ "$PARTICIPANTS" =~ ^[1-9][0-9]?$ ]] || die "--participants must be 1..99, got $PARTICIPANTS"
[[ "$COORDINATORS" =~ ^[1-9]$ ]] || die "--coordinators must be 1..9, got $COORDINATORS"
[[ "$BASE_PORT" =~ ^[0-9]+$ ]] && (( BASE_PORT >= 1024 && BASE_PORT + 130 < 65536 )) \
  || die "--base-port must leave room for every node's port (1024..65000), got $BASE_PORT"

STATE="$DIR/cluster.env"
# A cluster that is already set up keeps its layout: later commands read it from DIR.
if [[ -f "$STATE" ]]; then
  # shellcheck disable=SC1090
  source "$STATE"
fi

# Several coordinators (or one over etcd) are named c1..cN; a lone one over sled, coordinator.
coordinators() {
  if [[ "$ETCD" == 0 && "$COORDINATORS" == 1 ]]; then echo coordinator
  else for ((i = 1; i <= COORDINATORS; i++)); do echo "c$i"; done; fi
}
etcd_members() { if [[ "$ETCD" == 1 ]]; then for ((i = 1; i <= ETCD_MEMBERS; i++)); do echo "e$i"; done; fi; }
participants() { for ((i = 1; i <= PARTICIPANTS; i++)); do echo "p$i"; done; }
nodes() { etcd_members; coordinators; echo readmodel; participants; }
is_coordinator() { [[ "$1" == coordinator || "$1" =~ ^c[1-9]$ ]]; }
port_of() {
  case "$1" in
    coordinator) echo "$BASE_PORT" ;;
    readmodel) echo $((BASE_PORT + 9)) ;;
    c[0-9]*) local n="${1#c}"; echo $((BASE_PORT + n - 1)) ;;
    p[0-9]*) local n="${1#p}"; echo $((BASE_PORT + 9 + n)) ;;
    e[0-9]*) local n="${1#e}"; echo $((BASE_PORT + 110 + n)) ;;
  esac
}
peer_port_of() { local n="${1#e}"; echo $((BASE_PORT + 120 + n)); }
check_node() {
  [[ -n "$1" ]] || die "$COMMAND needs a NODE ($(nodes | tr '\n' ' '))"
  nodes | grep -qx "$1" || die "unknown node $1; this cluster has: $(nodes | tr '\n' ' ')"
}
coordinator_urls() {
  local urls=() c
  for c in $(coordinators); do urls+=("http://127.0.0.1:$(port_of "$c")"); done
  (IFS=,; echo "${urls[*]}")
}
etcd_spec() {
  local hosts=() e
  for e in $(etcd_members); do hosts+=("127.0.0.1:$(port_of "$e")"); done
  (IFS=,; echo "etcd://${hosts[*]}")
}
etcd_bin() {
  command -v etcd 2>/dev/null || { [[ -x /usr/bin/etcd ]] && echo /usr/bin/etcd; } \
    || die "etcd not found: install Debian's etcd-server (apt-get install etcd-server)"
}
pid_of() { [[ -f "$DIR/$1.pid" ]] && cat "$DIR/$1.pid" || true; }
# A killed node whose parent never reaps it lingers as a zombie: that counts as dead.
pid_alive() { kill -0 "$1" 2>/dev/null && [[ "$(ps -o stat= -p "$1" 2>/dev/null)" != Z* ]]; }
alive() { local pid; pid="$(pid_of "$1")"; [[ -n "$pid" ]] && pid_alive "$pid"; }
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
bin_dir() { echo "$ROOT/target/$PROFILE"; }
TLS_DIR="$DIR/tls"

# Certificates and the admin token for --tls, made once per cluster directory.
make_tls() {
  [[ -f "$TLS_DIR/ca.pem" ]] && return 0
  mkdir -p "$TLS_DIR"
  # shellcheck disable=SC2046
  "$(bin_dir)/txnctl" certs --dir "$TLS_DIR" $(nodes) client >/dev/null \
    || die "generating certificates in $TLS_DIR failed"
  (umask 077; od -An -N24 -tx1 /dev/urandom | tr -d ' \n' >"$TLS_DIR/admin.token")
}

# What txnctl needs to reach this cluster, as environment variables.
txnctl_env() {
  echo "TXNCTL_COORDINATOR=$(coordinator_urls)"
  echo "TXNCTL_READMODEL=http://127.0.0.1:$(port_of readmodel)"
  if [[ "$TLS" == 1 ]]; then
    echo "TXNCTL_TLS_CA=$TLS_DIR/ca.pem"
    echo "TXNCTL_TLS_CERT=$TLS_DIR/client.pem"
    echo "TXNCTL_TLS_KEY=$TLS_DIR/client.key"
    echo "TXNCTL_TOKEN=$(cat "$TLS_DIR/admin.token")"
  fi
}

build() {
  if [[ "${CLUSTER_NO_BUILD:-0}" == 1 ]]; then
    local b
    for b in coordinator participant readmodel txnctl; do
      [[ -x "$(bin_dir)/$b" ]] || die "CLUSTER_NO_BUILD=1 but $(bin_dir)/$b is missing; build it first"
    done
    return 0
  fi
  local flags=(--quiet --bins -p txn-coordinator -p txn-participant -p txn-readmodel
    --features txn-coordinator/failpoints,txn-participant/failpoints)
  [[ "$PROFILE" == release ]] && flags+=(--release)
  echo "building the binaries ($PROFILE)..."
  (cd "$ROOT" && cargo build "${flags[@]}") || die "cargo build failed"
}

args_of() {
  local node="$1" port; port="$(port_of "$node")"
  if [[ "$node" =~ ^e[0-9]+$ ]]; then
    local initial=() e
    for e in $(etcd_members); do initial+=("$e=http://127.0.0.1:$(peer_port_of "$e")"); done
    printf '%s\n' --name "$node" --data-dir "$DIR/data/$node" \
      --listen-client-urls "http://127.0.0.1:$port" --advertise-client-urls "http://127.0.0.1:$port" \
      --listen-peer-urls "http://127.0.0.1:$(peer_port_of "$node")" \
      --initial-advertise-peer-urls "http://127.0.0.1:$(peer_port_of "$node")" \
      --initial-cluster "$(IFS=,; echo "${initial[*]}")" --initial-cluster-state new \
      --initial-cluster-token "txnkit-$BASE_PORT" \
      --auto-compaction-mode revision --auto-compaction-retention 10000 \
      --quota-backend-bytes 1073741824 --logger zap --log-level warn
    return
  fi
  if [[ "$TLS" == 1 ]]; then
    printf '%s\n' --tls-cert "$TLS_DIR/$node.pem" --tls-key "$TLS_DIR/$node.key" \
      --tls-ca "$TLS_DIR/ca.pem" --admin-token-file "$TLS_DIR/admin.token"
  fi
  if is_coordinator "$node" || [[ "$node" == readmodel ]]; then
    printf '%s\n' --listen "127.0.0.1:$port" --data-dir "$DIR/data/$node"
    for ((i = 1; i <= PARTICIPANTS; i++)); do
      printf '%s\n' --participant "p$i=http://127.0.0.1:$(port_of "p$i")"
    done
    if [[ "$ETCD" == 1 ]] && is_coordinator "$node"; then
      printf '%s\n' --log "$(etcd_spec)" --lease-ttl-secs "$LEASE_TTL_SECS"
    fi
  else
    printf '%s\n' --name "$node" --listen "127.0.0.1:$port" --data-dir "$DIR/data/$node" \
      --coordinator "$(coordinator_urls)"
    for ((i = 1; i <= PARTICIPANTS; i++)); do
      [[ "p$i" == "$node" ]] || printf '%s\n' --peer "p$i=http://127.0.0.1:$(port_of "p$i")"
    done
  fi
}

start_node() {
  local node="$1" port bin args
  port="$(port_of "$node")"
  if alive "$node"; then echo "$node already running (pid $(pid_of "$node"))"; return 0; fi
  port_busy "$port" && die "port $port (for $node) is already in use by another process"
  if [[ "$node" =~ ^e[0-9]+$ ]]; then bin="$(etcd_bin)"
  elif is_coordinator "$node"; then bin="$(bin_dir)/coordinator"
  elif [[ "$node" == readmodel ]]; then bin="$(bin_dir)/readmodel"
  else bin="$(bin_dir)/participant"; fi
  [[ -x "$bin" ]] || die "$bin is missing; run: scripts/cluster.sh up"
  mapfile -t args < <(args_of "$node")
  echo "--- start $(date -u +%FT%TZ)" >>"$DIR/$node.log"
  nohup "$bin" "${args[@]}" >>"$DIR/$node.log" 2>&1 </dev/null &
  echo $! >"$DIR/$node.pid"
  # etcd members answer only once a quorum runs: `up` starts them all before waiting.
  [[ "${2:-wait}" == nowait ]] || wait_ready "$node"
}

wait_ready() {
  local node="$1" port deadline=$((SECONDS + READY_TIMEOUT))
  port="$(port_of "$node")"
  until port_busy "$port"; do
    if ! alive "$node"; then
      echo "cluster.sh: $node exited during start; last lines of $DIR/$node.log:" >&2
      tail -n 15 "$DIR/$node.log" >&2; exit 1
    fi
    if (( SECONDS > deadline )); then
      echo "cluster.sh: $node did not answer on port $port within ${READY_TIMEOUT}s; last lines of its log:" >&2
      tail -n 15 "$DIR/$node.log" >&2; exit 1
    fi
    sleep 0.1
  done
}

stop_node() {
  local node="$1" pid
  pid="$(pid_of "$node")"
  if [[ -z "$pid" ]] || ! pid_alive "$pid"; then rm -f "$DIR/$node.pid"; return 0; fi
  kill -CONT "$pid" 2>/dev/null || true
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + GRACE))
  while pid_alive "$pid" && (( SECONDS < deadline )); do sleep 0.1; done
  if pid_alive "$pid"; then
    echo "$node did not stop within ${GRACE}s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    while pid_alive "$pid"; do sleep 0.05; done
  fi
  rm -f "$DIR/$node.pid"
}

node_state() {
  local node="$1" pid
  pid="$(pid_of "$node")"
  if [[ -n "$pid" ]] && pid_alive "$pid"; then
    if [[ "$(ps -o stat= -p "$pid" 2>/dev/null)" == T* ]]; then echo paused; else echo running; fi
  else
    echo stopped
  fi
}

print_status() {
  printf '%-12s %-8s %-8s %s\n' NODE PID STATE ADDRESS
  for n in $(nodes); do
    printf '%-12s %-8s %-8s %s\n' "$n" "$(pid_of "$n" || true)" "$(node_state "$n")" "http://127.0.0.1:$(port_of "$n")"
  done
}

case "$COMMAND" in
  up)
    mkdir -p "$DIR/data"
    if [[ ! -f "$STATE" ]]; then
      printf 'PARTICIPANTS=%s\nBASE_PORT=%s\nPROFILE=%s\nTLS=%s\nETCD=%s\nCOORDINATORS=%s\n' \
        "$PARTICIPANTS" "$BASE_PORT" "$PROFILE" "$TLS" "$ETCD" "$COORDINATORS" >"$STATE"
    fi
    [[ "$ETCD" == 1 || "$COORDINATORS" == 1 ]] \
      || die "--coordinators $COORDINATORS needs --etcd: several coordinators share their log in etcd"
    build
    [[ "$TLS" == 1 ]] && make_tls
    for n in $(etcd_members); do start_node "$n" nowait; done
    for n in $(etcd_members); do wait_ready "$n"; done
    for n in $(participants); do start_node "$n"; done
    for n in $(coordinators); do start_node "$n"; done
    start_node readmodel
    mapfile -t txnctl_vars < <(txnctl_env)
    env "${txnctl_vars[@]}" "$(bin_dir)/txnctl" status >/dev/null \
      || die "the coordinator does not answer txnctl status; see the coordinators' logs in $DIR"
    echo
    print_status
    echo
    echo "cluster is up (data and logs in $DIR$([[ "$TLS" == 1 ]] && echo "; mutual TLS, certificates and admin token in $TLS_DIR")). Try:"
    for v in "${txnctl_vars[@]}"; do echo "  export $v"; done
    echo "  $(bin_dir)/txnctl status"
    echo "  $(bin_dir)/txnctl transfer --from p1/alice --to p2/bob --amount 10 --allow-negative"
    echo "  $(bin_dir)/txnctl transfer --from p1/alice --to p3/carol --amount 5 --protocol events --allow-negative --wait"
    echo "  $(bin_dir)/txnctl events"
    echo "  $(bin_dir)/txnctl readmodel balances --consistent"
    ;;
  env)
    [[ -f "$STATE" ]] || die "no cluster in $DIR (start one with: scripts/cluster.sh up --dir $DIR)"
    txnctl_env | sed 's/^/export /'
    ;;
  down)
    [[ -d "$DIR" ]] || { echo "no cluster in $DIR"; exit 0; }
    # The read model and the coordinators first (they leave etcd), then participants, then etcd.
    for n in readmodel $(coordinators) $(participants) $(etcd_members); do stop_node "$n"; done
    echo "cluster in $DIR is down"
    ;;
  status)
    [[ -f "$STATE" ]] || die "no cluster in $DIR (start one with: scripts/cluster.sh up --dir $DIR)"
    print_status
    ;;
  kill)
    check_node "$NODE"
    alive "$NODE" || die "$NODE is not running"
    kill -"$SIGNAL" "$(pid_of "$NODE")" || die "kill -$SIGNAL $NODE failed"
    echo "sent SIG$SIGNAL to $NODE (pid $(pid_of "$NODE"))"
    ;;
  restart)
    check_node "$NODE"
    if alive "$NODE"; then kill -KILL "$(pid_of "$NODE")"; while alive "$NODE"; do sleep 0.05; done; fi
    rm -f "$DIR/$NODE.pid"
    start_node "$NODE"
    echo "$NODE restarted (pid $(pid_of "$NODE"))"
    ;;
  pause)
    check_node "$NODE"; alive "$NODE" || die "$NODE is not running"
    kill -STOP "$(pid_of "$NODE")"; echo "$NODE paused"
    ;;
  resume)
    check_node "$NODE"; alive "$NODE" || die "$NODE is not running"
    kill -CONT "$(pid_of "$NODE")"; echo "$NODE resumed"
    ;;
  logs)
    check_node "$NODE"
    [[ -f "$DIR/$NODE.log" ]] || die "no log for $NODE in $DIR"
    if (( FOLLOW )); then tail -n 50 -f "$DIR/$NODE.log"; else cat "$DIR/$NODE.log"; fi
    ;;
  wipe)
    if [[ -f "$STATE" ]]; then for n in readmodel $(coordinators) $(participants) $(etcd_members); do stop_node "$n"; done; fi
    rm -rf "$DIR"
    echo "wiped $DIR"
    ;;
  *)
    echo "cluster.sh: unknown command $COMMAND" >&2; usage 2 ;;
esac
