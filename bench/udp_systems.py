"""The systems bench/udp.py measures, each exposing services that may be UDP, TCP or both on
one public port (iperf3 -u needs both). Each has the interface of harness.Burrow: `public`
(service name -> public port), `pids` and `stop()`.

A service is `name: (local_port, protocols)`, protocols a tuple of "tcp" and "udp".
"""

import random
import socket
import tempfile
from pathlib import Path

import harness
import peers

# The relay's default range for tunnel ports.
PORT_RANGE = (20000, 29999)


def free_tcp_and_udp_port(low=PORT_RANGE[0], high=PORT_RANGE[1], tries=200):
    """A port of 127.0.0.1 in [low, high] free a moment ago for both TCP and UDP."""
    for _ in range(tries):
        port = random.randint(low, high)
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            try:
                tcp.bind(("127.0.0.1", port))
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no port in {low}-{high} free for both TCP and UDP")


class Direct:
    """No tunnel: the visitor reaches each local port itself."""

    pids = []

    def __init__(self, services, **_):
        self.public = {name: local for name, (local, _) in services.items()}

    def stop(self):
        pass


def burrow_config(relay, fingerprint, services, public):
    """The agent's config: one tunnel per service and protocol, on the service's public port."""
    lines = [f'relay = "{relay}"', f'fingerprint = "{fingerprint}"']
    for name, (local, protocols) in services.items():
        for protocol in protocols:
            lines += ["", "[[tunnels]]", f'name = "{name}-{protocol}"', f'protocol = "{protocol}"',
                      f"local = {local}", f"remote_port = {public[name]}"]
    return "\n".join(lines) + "\n"


class BurrowUdp(harness.Burrow):
    """A relay and an agent (from harness.BIN) with the services' tunnels."""

    def __init__(self, services, netns_relay=None, netns_agent=None, relay_ip="127.0.0.1", public=None):
        self.dir = tempfile.TemporaryDirectory(prefix="burrow-udp-bench-")
        data = Path(self.dir.name)
        self.relay = harness.Process(
            [str(harness.BIN / "relay"), "--listen", f"{relay_ip}:0", "--public-bind", "127.0.0.1",
             "--admin-listen", "off", "--data-dir", str(data / "relay")],
            env={"RUST_LOG": "warn", **harness.ONE_ADDRESS_LOAD}, netns=netns_relay, quiet=True, ready_file=True)
        relay = self.relay.ready()
        config = data / "agent.toml"
        address = f"{relay_ip}:{harness.port_of(relay['quic'])}"
        config.write_text(burrow_config(address, relay["fingerprint"], services, public))
        self.agent = harness.Process([str(harness.BIN / "agent"), "--config", str(config)],
                                     env={"BURROW_TOKEN": relay["token"], "RUST_LOG": "warn"}, netns=netns_agent,
                                     quiet=True, ready_file=True)
        wanted = {f"{name}-{p}" for name, (_, protocols) in services.items() for p in protocols}
        online = self.agent.ready(until=lambda ready: {t["name"] for t in ready["tunnels"]} >= wanted)
        ports = {t["name"]: t["port"] for t in online["tunnels"]}
        self.public = {name: ports[f"{name}-{protocols[0]}"] for name, (_, protocols) in services.items()}


def rathole_configs(control, services, public, transports):
    """rathole's server and client configs: one service per service and protocol."""
    server_transport, client_transport = transports
    server = [f'[server]\nbind_addr = "{control}"\n', server_transport]
    client = [f'[client]\nremote_addr = "{control}"\n', client_transport]
    for name, (local, protocols) in services.items():
        for protocol in protocols:
            common = f'token = "bench-token"\ntype = "{protocol}"\n'
            server.append(f'[server.services.{name}-{protocol}]\n{common}bind_addr = "127.0.0.1:{public[name]}"\n')
            client.append(f'[client.services.{name}-{protocol}]\n{common}local_addr = "127.0.0.1:{local}"\n')
    return "\n".join(server), "\n".join(client)


class RatholeUdp(peers.RatholeTls):
    """rathole 0.5 over its TLS transport, with `type = "udp"` (and "tcp") services."""

    def __init__(self, services, netns_relay=None, netns_agent=None, relay_ip="127.0.0.1", public=None):
        self.dir = tempfile.TemporaryDirectory(prefix="rathole-udp-bench-")
        d = Path(self.dir.name)
        control = f"{relay_ip}:{peers.free_port_in(netns_relay)}"
        server, client = rathole_configs(control, services, public, self.transports(d))
        (d / "server.toml").write_text(server)
        (d / "client.toml").write_text(client)
        env = {"RUST_LOG": "info", "NO_COLOR": "1"}
        self.server = harness.Process([str(peers.PEERS / "rathole"), "--server", str(d / "server.toml")], env=env,
                                      netns=netns_relay)
        self.server.line(r"Listening at")
        self.client = harness.Process([str(peers.PEERS / "rathole"), "--client", str(d / "client.toml")], env=env,
                                      netns=netns_agent)
        for _ in range(sum(len(protocols) for _, protocols in services.values())):
            self.client.line(r"Control channel established")
        self.server.drain()
        self.client.drain()
        self.public = dict(public)


SYSTEMS = {"direct": Direct, "burrow": BurrowUdp, "rathole-udp": RatholeUdp}


def start(name, services, netns_relay=None, netns_agent=None, relay_ip="127.0.0.1", public_port=None):
    """Starts system `name` with `services`, each on `public_port` or on a free port of its own."""
    public = {service: public_port or free_tcp_and_udp_port() for service in services}
    return SYSTEMS[name](services, netns_relay=netns_relay, netns_agent=netns_agent, relay_ip=relay_ip, public=public)
