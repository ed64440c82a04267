#!/usr/bin/env bash
# delaylink.sh - two network namespaces joined by one veth link with a fixed
# one-way delay, for measuring new-connection latency over a relay<->agent path.
#
#   brwb-relay 10.98.0.1/24 [brwb-r] ===== veth ===== [brwb-a] 10.98.0.2/24 brwb-agent
#               each direction: +DELAY_MS  ->  RTT = 2 x DELAY_MS
#
# The kernels here have no sch_netem, so the delay is done in user space:
# iptables sends the link's packets to an NFQUEUE and delay.py (one per
# namespace) accepts each one DELAY_MS later. No --queue-bypass: if a delayer
# dies, the link drops packets (fail-closed) instead of silently going fast.
# Nothing is added to the root namespace; both veth ends are created inside.
#
# Usage (as root): delaylink.sh deps | up DELAY_MS | check | down | help
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# The delayer is shared with the fault suite's simulated internet.
DELAYER="$(cd "$HERE/../../faults" && pwd)/delay.py"
PROG="$(basename "$0")"
NS_RELAY=brwb-relay; IF_RELAY=brwb-r; IP_RELAY=10.98.0.1; Q_RELAY=0
NS_AGENT=brwb-agent; IF_AGENT=brwb-a; IP_AGENT=10.98.0.2; Q_AGENT=1
STATE="${BRWB_STATE_DIR:-/run/brwb}"
PY="${BRWB_PYTHON:-python3}"
# Where each namespace's delayer sits:
#   ingress (default): raw PREROUTING -i veth, i.e. each packet is held when
#     it ARRIVES over the link. Every packet still crosses the link once, so
#     the RTT is the same, and the sender's socket is no longer charged for
#     held packets (as on a real wire). Caveat: the kernel's receive timestamp
#     (SO_TIMESTAMP, what plain `ping` reports) is taken before the hold, so it
#     misses the last hop's delay; user-space clocks see the full delay.
#   egress: mangle POSTROUTING -o veth, each packet is held as it LEAVES,
#     while still owned by the sending socket: TCP small queues and the UDP
#     send buffer then throttle throughput to ~2 / ~21 Mbit/s at 25 ms.
#     Kept only for comparison.
HOOK="${BRWB_DELAY_HOOK:-ingress}"

say() { printf '%s\n' "$*"; }
die() { printf '%s: %s\n' "$PROG" "$*" >&2; exit 1; }
need_root() { [ "$(id -u)" = 0 ] || die "must run as root"; }
ns_exists() { [ -e "/run/netns/$1" ]; }
nsx() { local ns="$1"; shift; ip netns exec "$ns" "$@"; }

usage() {
  cat <<EOF
usage: $PROG COMMAND

  deps          apt-get install what is missing (iproute2 iptables iputils-ping ethtool python3)
  up DELAY_MS   create $NS_RELAY ($IP_RELAY) <-veth-> $NS_AGENT ($IP_AGENT) with DELAY_MS
                added in each direction (RTT = 2 x DELAY_MS); fails if they exist
  check         ping -c 5 across the link; exit 1 unless median RTT = 2 x DELAY_MS +/-20%
  down          stop the delayers, delete both namespaces and $STATE (idempotent)

Run programs with: ip netns exec $NS_RELAY CMD... / ip netns exec $NS_AGENT CMD...
Env: BRWB_DELAY_HOOK=ingress|egress (default ingress), BRWB_STATE_DIR, BRWB_PYTHON
EOF
}

# --------------------------------------------------------------------- deps
cmd_deps() {
  need_root
  local missing=() log
  command -v ip >/dev/null       || missing+=(iproute2)
  command -v iptables >/dev/null || missing+=(iptables)
  command -v ping >/dev/null     || missing+=(iputils-ping)
  command -v ethtool >/dev/null  || missing+=(ethtool)
  command -v "$PY" >/dev/null    || missing+=(python3)
  [ "${#missing[@]}" -eq 0 ] && return 0
  command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get; install them by hand"
  log="$(mktemp)"
  if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
         DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"; } \
       >"$log" 2>&1; then
    cat "$log" >&2; rm -f "$log"
    die "apt-get install ${missing[*]} failed"
  fi
  rm -f "$log"
}

# ----------------------------------------------------------------------- up
# Delayer lifecycle. delay.py writes its own PID to ROLE.ready once it has
# bound its queue; that PID (verified against /proc/PID/cmdline) is recorded.
start_delayer() { # role ns queue delay_ms
  local role="$1" ns="$2" q="$3" d="$4" pid
  local ready="$STATE/$role.ready"
  setsid ip netns exec "$ns" "$PY" "$DELAYER" --queue "$q" --delay-ms "$d" \
    --ready-file "$ready" </dev/null >>"$STATE/$role.log" 2>&1 &
  for _ in $(seq 100); do
    [ -s "$ready" ] && break
    [ -s "$STATE/$role.log" ] && sleep 0.2 && break   # it only writes on errors
    sleep 0.05
  done
  [ -s "$ready" ] || { cat "$STATE/$role.log" >&2 || true; die "delayer for $ns did not start"; }
  pid="$(cat "$ready")"
  is_delayer "$pid" || { cat "$STATE/$role.log" >&2 || true; die "delayer for $ns exited right away"; }
  echo "$pid" >"$STATE/$role.pid"
}

is_delayer() { # pid -> true if it is one of our delay.py processes
  [ -n "$1" ] && [ -r "/proc/$1/cmdline" ] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -q "$DELAYER --queue"
}

offloads_off() { # ns ifname: no GSO/TSO/GRO, so delay acts on wire-sized packets
  if command -v ethtool >/dev/null && nsx "$1" ethtool -K "$2" gso off tso off gro off 2>/dev/null; then
    return 0
  fi
  nsx "$1" ip link set dev "$2" gso_max_segs 1
}

queue_rule() { # ns ifname queue: send the link's packets of this namespace to the queue
  case "$HOOK" in
    ingress) nsx "$1" iptables -w -t raw -A PREROUTING -i "$2" -j NFQUEUE --queue-num "$3" ;;
    egress)  nsx "$1" iptables -w -t mangle -A POSTROUTING -o "$2" -j NFQUEUE --queue-num "$3" ;;
  esac
}

UP_DONE=0
up_cleanup() {
  local rc=$?
  if [ "$UP_DONE" = 0 ]; then
    printf '%s: up failed (exit %s); tearing down\n' "$PROG" "$rc" >&2
    cmd_down >/dev/null 2>&1 || true
    [ "$rc" = 0 ] && rc=1
  fi
  exit "$rc"
}

cmd_up() {
  need_root
  [ $# -eq 1 ] || die "usage: $PROG up DELAY_MS"
  local d="$1" ns
  [[ "$d" =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "DELAY_MS must be a number of milliseconds, got '$d'"
  case "$HOOK" in ingress|egress) ;; *) die "BRWB_DELAY_HOOK must be ingress or egress" ;; esac
  for ns in "$NS_RELAY" "$NS_AGENT"; do
    ns_exists "$ns" && die "namespace $ns already exists; run '$PROG down' first"
  done
  local c
  for c in ip iptables setsid "$PY"; do
    command -v "$c" >/dev/null || die "'$c' not found; run '$PROG deps'"
  done
  [ -r "$DELAYER" ] || die "$DELAYER is missing"

  # From here on, any failure (or Ctrl-C) removes everything we created.
  trap up_cleanup EXIT
  trap 'exit 130' INT TERM HUP
  rm -rf "$STATE"
  mkdir -p "$STATE"
  echo "$d" >"$STATE/delay_ms"
  echo "$HOOK" >"$STATE/hook"

  for ns in "$NS_RELAY" "$NS_AGENT"; do
    ip netns add "$ns"
    # IPv4 only: no IPv6 (not even link-local) can bypass the iptables rules.
    nsx "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 2>/dev/null || true
    nsx "$ns" ip link set lo up
  done
  ip link add "$IF_RELAY" netns "$NS_RELAY" type veth peer name "$IF_AGENT" netns "$NS_AGENT"
  nsx "$NS_RELAY" ip addr add "$IP_RELAY/24" dev "$IF_RELAY"
  nsx "$NS_AGENT" ip addr add "$IP_AGENT/24" dev "$IF_AGENT"
  offloads_off "$NS_RELAY" "$IF_RELAY"
  offloads_off "$NS_AGENT" "$IF_AGENT"
  nsx "$NS_RELAY" ip link set "$IF_RELAY" up
  nsx "$NS_AGENT" ip link set "$IF_AGENT" up
  # Static neighbours: no ARP exchange (which NFQUEUE would not delay) on
  # the first connection after an idle period.
  nsx "$NS_RELAY" ip neigh replace "$IP_AGENT" dev "$IF_RELAY" nud permanent \
    lladdr "$(nsx "$NS_AGENT" cat "/sys/class/net/$IF_AGENT/address")"
  nsx "$NS_AGENT" ip neigh replace "$IP_RELAY" dev "$IF_AGENT" nud permanent \
    lladdr "$(nsx "$NS_RELAY" cat "/sys/class/net/$IF_RELAY/address")"

  # Delayers first (bound and ready), then the rules that feed them.
  start_delayer relay "$NS_RELAY" "$Q_RELAY" "$d"
  start_delayer agent "$NS_AGENT" "$Q_AGENT" "$d"
  queue_rule "$NS_RELAY" "$IF_RELAY" "$Q_RELAY"
  queue_rule "$NS_AGENT" "$IF_AGENT" "$Q_AGENT"

  UP_DONE=1
  trap - EXIT INT TERM HUP
  say "up: $NS_RELAY $IP_RELAY <-> $NS_AGENT $IP_AGENT, +${d} ms each way ($HOOK), expected RTT $(awk -v d="$d" 'BEGIN{printf "%g", 2*d}') ms"
  say "    delayers: relay pid $(cat "$STATE/relay.pid"), agent pid $(cat "$STATE/agent.pid"); state in $STATE"
}

# --------------------------------------------------------------------- down
cmd_down() {
  need_root
  local role pid ns pids=() p
  for role in relay agent; do
    pid="$(cat "$STATE/$role.pid" 2>/dev/null || true)"
    if is_delayer "$pid"; then pids+=("$pid"); kill -TERM "$pid" 2>/dev/null || true; fi
  done
  # Anything else still running inside our namespaces (test servers etc.).
  for ns in "$NS_RELAY" "$NS_AGENT"; do
    if ns_exists "$ns"; then
      for p in $(ip netns pids "$ns" 2>/dev/null); do
        case " ${pids[*]-} " in *" $p "*) continue ;; esac
        pids+=("$p"); kill -TERM "$p" 2>/dev/null || true
      done
    fi
  done
  # Delayers release what they hold (<= DELAY_MS) and exit; KILL after 5 s.
  for _ in $(seq 50); do
    local alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  for ns in "$NS_RELAY" "$NS_AGENT"; do
    if ns_exists "$ns"; then ip netns del "$ns"; fi
  done
  rm -rf "$STATE"
}

# -------------------------------------------------------------------- check
cmd_check() {
  need_root
  local ns role pid d out rc=0
  for ns in "$NS_RELAY" "$NS_AGENT"; do
    ns_exists "$ns" || die "namespace $ns does not exist; run '$PROG up DELAY_MS'"
  done
  d="$(cat "$STATE/delay_ms" 2>/dev/null)" || die "no $STATE/delay_ms; run '$PROG down' and '$PROG up DELAY_MS'"
  command -v ping >/dev/null || die "ping not found; run '$PROG deps' (or apt-get install -y iputils-ping)"
  for role in relay agent; do
    pid="$(cat "$STATE/$role.pid" 2>/dev/null || true)"
    if ! is_delayer "$pid"; then
      printf '%s: the %s delayer (pid %s) is not running: the link drops packets (fail-closed); see %s, then down + up\n' \
        "$PROG" "$role" "${pid:-?}" "$STATE/$role.log" >&2
      rc=1
    fi
  done
  # -U: user-to-user time. Plain ping reports the kernel's receive timestamp
  # of the reply, which is taken before the (ingress) delayer holds it.
  out="$(nsx "$NS_RELAY" ping -U -n -c 5 -i 0.2 -W 2 "$IP_AGENT" 2>&1)" || true
  printf '%s\n' "$out"
  for ns in "$NS_RELAY" "$NS_AGENT"; do
    nsx "$ns" cat /proc/net/netfilter/nfnetlink_queue 2>/dev/null | awk -v ns="$ns" \
      '{printf "nfqueue %s q%s: waiting=%s dropped(full)=%s dropped(netlink)=%s seen=%s\n", ns, $1, $3, $6, $7, $8}'
  done
  printf '%s\n' "$out" | grep -o 'time=[0-9.]*' | cut -d= -f2 | sort -n | awk -v d="$d" '
    { t[NR] = $1 }
    END {
      want = 2 * d; tol = 0.2 * want; if (tol < 1) tol = 1
      if (NR == 0) { printf "FAIL: no ping replies (expected RTT %g ms)\n", want; exit 1 }
      med = (NR % 2) ? t[(NR + 1) / 2] : (t[NR / 2] + t[NR / 2 + 1]) / 2
      ok = (med >= want - tol && med <= want + tol)
      lo = want - tol; if (lo < 0) lo = 0
      printf "%s: median RTT %.2f ms over %d/5 replies, expected %g ms (%.1f..%.1f)\n",
        (ok && NR == 5) ? "OK" : "FAIL", med, NR, want, lo, want + tol
      exit !(ok && NR == 5)
    }' || rc=1
  return "$rc"
}

main() {
  local cmd="${1:-help}"
  [ $# -gt 0 ] && shift
  case "$cmd" in
    deps) cmd_deps ;;
    up) cmd_up "$@" ;;
    down) cmd_down ;;
    check) cmd_check ;;
    help|-h|--help) usage ;;
    *) usage >&2; exit 2 ;;
  esac
}
main "$@"
