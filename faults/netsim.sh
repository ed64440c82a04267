#!/usr/bin/env bash
# netsim.sh - a small simulated internet in network namespaces, for burrow's fault suite.
#
#   P-client 10.80.1.2 ──┐
#   P-relay  10.80.0.1 ──┼── P-inet 10.80.{0,1,2}.254   the internet: a plain router where
#                        │                              faults are injected on the home uplink
#   P-router 10.80.2.2 ──┘   (spare WAN address 10.80.2.3, used by `rebind --addr`)
#      │  nftables: masquerade 10.80.3.0/24 to the WAN address, stateful firewall that drops
#      │  unsolicited inbound (counter `unsolicited`)
#   P-home   10.80.3.2   the laptop: agent and local server on its own 127.0.0.1
#
# The VPS also answers at 10.80.0.2 and 10.80.0.3, for a fleet of relays on one host, and can
# cut one of its own services (a TCP port on its loopback, like a store) off from its clients.
#
# P is the prefix ($NETSIM_PREFIX, default "bsim"), so several copies can run side by side.
# Nothing is added to the root namespace: both ends of every veth are created inside.
# The kernels here have no sch_netem: delay is an NFQUEUE held in user space (delay.py),
# loss an nftables random drop, bandwidth a tc tbf.
#
# Usage (as root): netsim.sh deps | up | down | exec NS CMD... | status
#                  impair [--delay MS] [--loss PCT] [--rate RATE] | impair off
#                  cut | heal | rebind [--addr] | nat-timeout SECONDS | cut-port PORT | heal-ports
set -Eeuo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PROG="$(basename "$0")"
P="${NETSIM_PREFIX:-bsim}"
NS_RELAY="$P-relay"; NS_CLIENT="$P-client"; NS_ROUTER="$P-router"; NS_HOME="$P-home"; NS_INET="$P-inet"
ALL_NS=("$NS_RELAY" "$NS_CLIENT" "$NS_ROUTER" "$NS_HOME" "$NS_INET")
STATE="/run/burrow-sim/$P"

RELAY_IP=10.80.0.1; CLIENT_IP=10.80.1.2
WAN_IP=10.80.2.2; WAN_IP2=10.80.2.3; LAN_GW=10.80.3.1; HOME_IP=10.80.3.2; HOME_NET=10.80.3.0/24
# The two outside port ranges `rebind` alternates between, so a continuing flow must move.
PORTS_A=20000-29999; PORTS_B=30000-39999
# The home uplink: the internet's side and the router's side of it.
UPLINK=up-router; WAN=wan
DELAY_QUEUE=0

die() { printf '%s: %s\n' "$PROG" "$*" >&2; exit 1; }
say() { printf '%s\n' "$*" >&2; }
need_root() { [ "$(id -u)" = 0 ] || die "must run as root"; }
ns_exists() { [ -e "/run/netns/$1" ]; }
nsx() { local ns="$1"; shift; ip netns exec "$ns" "$@"; }
any_up() { local n; for n in "${ALL_NS[@]}"; do ns_exists "$n" && return 0; done; return 1; }
need_up() { local n; for n in "${ALL_NS[@]}"; do ns_exists "$n" || die "not up (missing $n): run '$PROG up'"; done; }

usage() {
  cat <<EOF
usage: $PROG COMMAND            (prefix \$NETSIM_PREFIX=$P; state in $STATE)

  deps                 apt-get install what is missing (iproute2 nftables iptables conntrack python3
                       tinyproxy microsocks dnsmasq-base bind9-dnsutils iperf3)
  up                   build the namespaces $P-{relay,client,router,home,inet}
  down                 kill what runs inside them and delete them (idempotent)
  exec NS CMD...       run CMD in relay|client|router|home|inet
  impair [--delay MS] [--loss PCT] [--rate RATE]
                       on the home uplink, each direction: delay (RTT +2 x MS), random loss,
                       bandwidth cap (tbf, e.g. 50mbit); replaces any previous impairment
  impair off           remove every impairment
  cut | heal           silently drop everything on the home uplink / stop dropping
  cut-port PORT        the VPS silently drops TCP to and from its port PORT: a service it runs
                       there (a store on 127.0.0.1:PORT) is cut off from its clients
  heal-ports           undo every cut-port
  block-udp            the home router drops the home's UDP (open flows too), as strict networks do
  only-proxy           the home router drops everything the home sends out: only a proxy running
                       on the router (10.80.3.1) reaches the internet
  open-egress          undo block-udp / only-proxy
  rebind [--addr]      the NAT gives continuing flows a new outside port (--addr: and address)
  nat-timeout SECONDS  the router forgets idle UDP mappings after SECONDS
  status               addresses, NAT rule, impairments, conntrack entries
EOF
}

# --------------------------------------------------------------------------------- deps
cmd_deps() {
  need_root
  local missing=()
  command -v ip >/dev/null || missing+=(iproute2)
  command -v tc >/dev/null || missing+=(iproute2)
  command -v nft >/dev/null || missing+=(nftables)
  command -v iptables >/dev/null || missing+=(iptables)
  command -v conntrack >/dev/null || missing+=(conntrack)
  command -v python3 >/dev/null || missing+=(python3)
  # The agent's proxy tests start their own instances on loopback ports; the packaged
  # services are never used.
  command -v tinyproxy >/dev/null || missing+=(tinyproxy)
  command -v microsocks >/dev/null || missing+=(microsocks)
  # The UDP tunnel tests and bench drive real clients: dig against a dnsmasq of their own
  # (dnsmasq-base is the binary without the system service), and iperf3 -u.
  command -v dnsmasq >/dev/null || missing+=(dnsmasq-base)
  command -v dig >/dev/null || missing+=(bind9-dnsutils)
  command -v iperf3 >/dev/null || missing+=(iperf3)
  [ "${#missing[@]}" -eq 0 ] && return 0
  command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get: install them by hand"
  local log; log="$(mktemp)"
  if ! { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" ||
         { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
             --no-install-recommends "${missing[@]}"; }; } >"$log" 2>&1; then
    cat "$log" >&2; rm -f "$log"; die "apt-get install ${missing[*]} failed"
  fi
  rm -f "$log"
}

# The VPS's own cuts: `cut-port` drops a local TCP service's traffic both ways.
vps_rules() {
  cat <<EOF
table inet vps {
  chain cut { }
  chain output {
    type filter hook output priority filter; policy accept;
    jump cut
  }
}
EOF
}

# ----------------------------------------------------------------------------------- up
link() { # ns1 if1 addr1 ns2 if2 addr2
  ip link add "$2" netns "$1" type veth peer name "$5" netns "$4"
  nsx "$1" ip addr add "$3" dev "$2"
  nsx "$4" ip addr add "$6" dev "$5"
  # One wire-sized packet per skb, so loss, delay and the rate cap act as on a real path.
  nsx "$1" ip link set dev "$2" gso_max_segs 1 up
  nsx "$4" ip link set dev "$5" gso_max_segs 1 up
}

nat_rules() { # outside address, outside port range
  cat <<EOF
table ip nat
delete table ip nat
table ip nat {
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "$WAN" ip saddr $HOME_NET meta l4proto { tcp, udp } snat to $1:$2
    oifname "$WAN" ip saddr $HOME_NET snat to $1
  }
}
EOF
  echo "$1 $2" >"$STATE/nat"
}

firewall_rules() {
  cat <<EOF
table ip firewall {
  counter unsolicited { }
  # What the home network lets out, before anything else (block-udp, only-proxy).
  chain egress { }
  chain forward {
    type filter hook forward priority filter; policy drop;
    iifname "lan" jump egress
    ct state established,related accept
    iifname "lan" oifname "$WAN" accept
    counter name "unsolicited" drop
  }
  chain input {
    type filter hook input priority filter; policy drop;
    iifname "lo" accept
    ct state established,related accept
    iifname "lan" accept
    counter name "unsolicited" drop
  }
}
EOF
}

# The internet's fault chains: `cut` drops, `impair` drops at random then queues for delay.
internet_rules() {
  cat <<EOF
table inet faults {
  chain cut { }
  chain impair { }
  chain forward {
    type filter hook forward priority filter; policy accept;
    iifname "$UPLINK" jump cut
    oifname "$UPLINK" jump cut
    iifname "$UPLINK" jump impair
    oifname "$UPLINK" jump impair
  }
}
EOF
}

cmd_up() {
  need_root
  any_up && die "already (partly) up: run '$PROG down' first"
  for c in ip tc nft iptables conntrack python3 setsid; do
    command -v "$c" >/dev/null || die "'$c' not found: run '$PROG deps'"
  done
  trap 'say "up failed; tearing down"; cmd_down >/dev/null 2>&1 || true' ERR
  rm -rf "$STATE"; mkdir -p "$STATE"
  local ns
  for ns in "${ALL_NS[@]}"; do
    ip netns add "$ns"
    # IPv4 only, so nothing can go around the IPv4 rules.
    nsx "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
    nsx "$ns" ip link set lo up
  done
  link "$NS_RELAY" eth0 "$RELAY_IP/24" "$NS_INET" up-relay 10.80.0.254/24
  link "$NS_CLIENT" eth0 "$CLIENT_IP/24" "$NS_INET" up-client 10.80.1.254/24
  link "$NS_ROUTER" "$WAN" "$WAN_IP/24" "$NS_INET" "$UPLINK" 10.80.2.254/24
  link "$NS_HOME" eth0 "$HOME_IP/24" "$NS_ROUTER" lan "$LAN_GW/24"
  nsx "$NS_ROUTER" ip addr add "$WAN_IP2/24" dev "$WAN"
  # Further addresses of the VPS, so that a fleet of relays there can each open the same port.
  nsx "$NS_RELAY" ip addr add 10.80.0.2/24 dev eth0
  nsx "$NS_RELAY" ip addr add 10.80.0.3/24 dev eth0
  nsx "$NS_RELAY" ip route add default via 10.80.0.254
  nsx "$NS_CLIENT" ip route add default via 10.80.1.254
  nsx "$NS_ROUTER" ip route add default via 10.80.2.254 src "$WAN_IP"
  nsx "$NS_HOME" ip route add default via "$LAN_GW"
  nsx "$NS_INET" sysctl -qw net.ipv4.ip_forward=1
  nsx "$NS_ROUTER" sysctl -qw net.ipv4.ip_forward=1
  firewall_rules | nsx "$NS_ROUTER" nft -f -
  nat_rules "$WAN_IP" "$PORTS_A" | nsx "$NS_ROUTER" nft -f -
  internet_rules | nsx "$NS_INET" nft -f -
  vps_rules | nsx "$NS_RELAY" nft -f -
  trap - ERR
  say "up: relay $RELAY_IP, client $CLIENT_IP, home $HOME_IP behind NAT $WAN_IP ($P-*)"
}

# --------------------------------------------------------------------------------- down
cmd_down() {
  need_root
  stop_delayer
  local ns pids="" p
  for ns in "${ALL_NS[@]}"; do
    ns_exists "$ns" && pids="$pids $(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')"
  done
  for p in $pids; do kill -TERM "$p" 2>/dev/null || true; done
  for _ in $(seq 30); do
    local alive=0
    for p in $pids; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for p in $pids; do kill -KILL "$p" 2>/dev/null || true; done
  for ns in "${ALL_NS[@]}"; do ns_exists "$ns" && ip netns del "$ns"; done
  rm -rf "$STATE"
  any_up && die "some $P-* namespaces are still present"
  return 0
}

# ------------------------------------------------------------------------------- faults
stop_delayer() {
  local pid
  pid="$(cat "$STATE/delay.pid" 2>/dev/null || true)"
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$STATE/delay.pid" "$STATE/delay.ready"
}

start_delayer() { # delay_ms
  local ready="$STATE/delay.ready"
  rm -f "$ready"
  setsid ip netns exec "$NS_INET" python3 "$HERE/delay.py" --queue "$DELAY_QUEUE" --delay-ms "$1" \
    --ready-file "$ready" </dev/null >>"$STATE/delay.log" 2>&1 &
  for _ in $(seq 100); do [ -s "$ready" ] && break; sleep 0.05; done
  [ -s "$ready" ] || { cat "$STATE/delay.log" >&2 || true; die "the delayer did not start"; }
  cat "$ready" >"$STATE/delay.pid"
}

impair_off() {
  nsx "$NS_INET" nft flush chain inet faults impair
  nsx "$NS_INET" iptables -w -F FORWARD 2>/dev/null || true
  stop_delayer
  nsx "$NS_INET" tc qdisc del dev "$UPLINK" root 2>/dev/null || true
  nsx "$NS_ROUTER" tc qdisc del dev "$WAN" root 2>/dev/null || true
  rm -f "$STATE/impair"
}

cmd_impair() {
  need_root; need_up
  if [ "${1:-}" = off ]; then impair_off; say "impair: off"; return 0; fi
  local delay=0 loss=0 rate=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --delay) delay="$2"; shift 2 ;;
      --loss) loss="${2%\%}"; shift 2 ;;
      --rate) rate="$2"; shift 2 ;;
      *) die "usage: impair [--delay MS] [--loss PCT] [--rate RATE] | impair off" ;;
    esac
  done
  [[ "$delay" =~ ^[0-9]+$ ]] || die "--delay takes whole milliseconds, got '$delay'"
  [[ "$loss" =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "--loss takes a percentage, got '$loss'"
  impair_off
  local per_10k; per_10k="$(awk -v p="$loss" 'BEGIN { printf "%d", p * 100 }')"
  [ "$per_10k" -le 10000 ] || die "--loss must be at most 100, got '$loss'"
  if [ "$per_10k" -gt 0 ]; then
    nsx "$NS_INET" nft add rule inet faults impair numgen random mod 10000 lt "$per_10k" drop
  fi
  if [ "$delay" -gt 0 ]; then
    start_delayer "$delay"
    # No bypass: if the delayer dies the link drops packets, so a broken emulator looks
    # like an outage, never like a fast link. iptables, because this kernel has the xt
    # NFQUEUE target but not nftables' own queue expression.
    nsx "$NS_INET" iptables -w -A FORWARD -i "$UPLINK" -j NFQUEUE --queue-num "$DELAY_QUEUE"
    nsx "$NS_INET" iptables -w -A FORWARD -o "$UPLINK" -j NFQUEUE --queue-num "$DELAY_QUEUE"
  fi
  if [ -n "$rate" ]; then
    nsx "$NS_INET" tc qdisc replace dev "$UPLINK" root tbf rate "$rate" burst 64kb latency 100ms
    nsx "$NS_ROUTER" tc qdisc replace dev "$WAN" root tbf rate "$rate" burst 64kb latency 100ms
  fi
  echo "delay ${delay}ms loss ${loss}% rate ${rate:-unlimited} (each direction)" | tee "$STATE/impair" >&2
}

cmd_cut() {
  need_root; need_up
  nsx "$NS_INET" nft flush chain inet faults cut
  nsx "$NS_INET" nft add rule inet faults cut drop
  say "cut: the home uplink drops everything"
}

cmd_heal() {
  need_root; need_up
  nsx "$NS_INET" nft flush chain inet faults cut
  say "heal: the home uplink carries traffic again"
}

cmd_cut_port() {
  need_root; need_up
  [[ "${1:-}" =~ ^[0-9]+$ ]] || die "usage: cut-port PORT"
  nsx "$NS_RELAY" nft add rule inet vps cut tcp dport "$1" drop
  nsx "$NS_RELAY" nft add rule inet vps cut tcp sport "$1" drop
  say "cut-port: the VPS drops TCP to and from its port $1"
}

cmd_heal_ports() {
  need_root; need_up
  nsx "$NS_RELAY" nft flush chain inet vps cut
  say "heal-ports: the VPS's services are reachable again"
}

# The home network's egress policy: `udp` drops UDP (flows already open included), `proxy`
# drops everything the home sends out, so only a proxy on the router (10.80.3.1) gets out.
cmd_egress() {
  need_root; need_up
  nsx "$NS_ROUTER" nft flush chain ip firewall egress
  case "$1" in
    open) say "egress: the home network lets everything out" ;;
    udp) nsx "$NS_ROUTER" nft add rule ip firewall egress meta l4proto udp drop; say "egress: UDP dropped" ;;
    proxy) nsx "$NS_ROUTER" nft add rule ip firewall egress drop; say "egress: only the router's proxy gets out" ;;
  esac
}

cmd_rebind() {
  need_root; need_up
  local move_addr=0
  case "${1:-}" in "") ;; --addr) move_addr=1 ;; *) die "usage: rebind [--addr]" ;; esac
  local addr ports
  read -r addr ports <"$STATE/nat"
  [ "$ports" = "$PORTS_A" ] && ports="$PORTS_B" || ports="$PORTS_A"
  if [ "$move_addr" = 1 ]; then [ "$addr" = "$WAN_IP" ] && addr="$WAN_IP2" || addr="$WAN_IP"; fi
  nat_rules "$addr" "$ports" | nsx "$NS_ROUTER" nft -f -
  # Forgetting the mapping alone is not enough: Linux would pick the same port again for
  # the same flow. With the new rule, the flow's next packet gets a new outside address.
  nsx "$NS_ROUTER" conntrack -D -p udp >/dev/null 2>&1 || true
  say "rebind: continuing UDP flows now leave as $addr:$ports"
}

cmd_nat_timeout() {
  need_root; need_up
  [[ "${1:-}" =~ ^[0-9]+$ ]] || die "usage: nat-timeout SECONDS"
  nsx "$NS_ROUTER" sysctl -qw "net.netfilter.nf_conntrack_udp_timeout=$1" \
    "net.netfilter.nf_conntrack_udp_timeout_stream=$1"
  say "nat-timeout: idle UDP mappings expire after ${1}s"
}

cmd_status() {
  local ns
  for ns in "${ALL_NS[@]}"; do
    if ns_exists "$ns"; then
      printf '%-14s %s\n' "$ns" "$(nsx "$ns" ip -br -4 addr show | awk '$1 != "lo" { printf "%s %s  ", $1, $3 }')"
    else
      printf '%-14s (absent)\n' "$ns"
    fi
  done
  any_up || return 0
  echo "nat: $(cat "$STATE/nat" 2>/dev/null)"
  echo "impair: $(cat "$STATE/impair" 2>/dev/null || echo none)"
  if nsx "$NS_INET" nft list chain inet faults cut | grep -q drop; then echo "uplink: CUT"; else echo "uplink: up"; fi
  nsx "$NS_ROUTER" conntrack -L -p udp 2>/dev/null || true
}

cmd_exec() {
  [ $# -ge 2 ] || die "usage: exec relay|client|router|home|inet CMD..."
  local ns="$P-$1"; shift
  ns_exists "$ns" || die "no namespace $ns: run '$PROG up'"
  exec ip netns exec "$ns" "$@"
}

main() {
  local cmd="${1:-help}"; shift || true
  case "$cmd" in
    deps) cmd_deps ;;
    up) cmd_up ;;
    down) cmd_down ;;
    exec) cmd_exec "$@" ;;
    impair) cmd_impair "$@" ;;
    cut) cmd_cut ;;
    heal) cmd_heal ;;
    block-udp) cmd_egress udp ;;
    only-proxy) cmd_egress proxy ;;
    open-egress) cmd_egress open ;;
    rebind) cmd_rebind "$@" ;;
    nat-timeout) cmd_nat_timeout "$@" ;;
    cut-port) cmd_cut_port "$@" ;;
    heal-ports) cmd_heal_ports ;;
    status) cmd_status ;;
    help|-h|--help) usage ;;
    *) usage >&2; exit 2 ;;
  esac
}

main "$@"
