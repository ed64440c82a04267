"""Other tunnels, run beside burrow in the same harness run (`bench/run --peers`).

bore 0.6 (plain TCP, no encryption) and rathole 0.5 with TLS and with Noise, installed from
crates.io into bench/.cache by `bench/run --peers`. Each class has the interface of
harness.Burrow: `public` (tunnel name -> public port), `pids` and `stop()`.
"""

import itertools
import re
import subprocess
import tempfile
from pathlib import Path

import harness

PEERS = harness.ROOT / "bench" / ".cache" / "bin"


def installed():
    return (PEERS / "bore").exists() and (PEERS / "rathole").exists()


class Bore:
    def __init__(self, tunnels, netns_relay=None, netns_agent=None, relay_ip="127.0.0.1"):
        self.server = harness.Process(
            [str(PEERS / "bore"), "server", "--bind-addr", relay_ip, "--bind-tunnels", "127.0.0.1"],
            netns=netns_relay,
        )
        self.server.line(r"server listening")
        self.clients, self.public = [], {}
        for name, local in tunnels.items():
            client = harness.Process(
                [str(PEERS / "bore"), "local", str(local), "--local-host", "127.0.0.1", "--to", relay_ip],
                netns=netns_agent,
            )
            self.public[name] = int(client.line(r"listening at \S+:(\d+)").group(1))
            self.clients.append(client.drain())
        self.server.drain()

    @property
    def pids(self):
        return [self.server.pid] + [c.pid for c in self.clients]

    def stop(self):
        for p in self.clients + [self.server]:
            p.stop()


class Rathole:
    """rathole with `transport` = "tls" or "noise"; one service per tunnel."""

    transport = None

    def __init__(self, tunnels, netns_relay=None, netns_agent=None, relay_ip="127.0.0.1"):
        self.dir = tempfile.TemporaryDirectory(prefix="rathole-bench-")
        d = Path(self.dir.name)
        control = free_port_in(netns_relay)
        self.public = {name: free_port_in(netns_relay) for name in tunnels}
        server_transport, client_transport = self.transports(d)
        server = [f'[server]\nbind_addr = "{relay_ip}:{control}"\n', server_transport]
        client = [f'[client]\nremote_addr = "{relay_ip}:{control}"\n', client_transport]
        for name, local in tunnels.items():
            server.append(f'[server.services.{name}]\ntoken = "bench-token"\nbind_addr = "127.0.0.1:{self.public[name]}"\n')
            client.append(f'[client.services.{name}]\ntoken = "bench-token"\nlocal_addr = "127.0.0.1:{local}"\n')
        (d / "server.toml").write_text("\n".join(server))
        (d / "client.toml").write_text("\n".join(client))
        env = {"RUST_LOG": "info", "NO_COLOR": "1"}
        self.server = harness.Process([str(PEERS / "rathole"), "--server", str(d / "server.toml")], env=env,
                                      netns=netns_relay)
        self.server.line(r"Listening at")
        self.client = harness.Process([str(PEERS / "rathole"), "--client", str(d / "client.toml")], env=env,
                                      netns=netns_agent)
        for _ in tunnels:
            self.client.line(r"Control channel established")
        self.server.drain()
        self.client.drain()

    @property
    def pids(self):
        return [self.server.pid, self.client.pid]

    def stop(self):
        self.client.stop()
        self.server.stop()
        self.dir.cleanup()


class RatholeTls(Rathole):
    def transports(self, d):
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=DNS:localhost", "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")],
                       check=True, capture_output=True)
        subprocess.run(["openssl", "pkcs12", "-export", "-out", str(d / "identity.pfx"), "-inkey", str(d / "key.pem"),
                        "-in", str(d / "cert.pem"), "-passout", "pass:bench"], check=True, capture_output=True)
        return (f'[server.transport]\ntype = "tls"\n[server.transport.tls]\npkcs12 = "{d / "identity.pfx"}"\n'
                f'pkcs12_password = "bench"\n',
                f'[client.transport]\ntype = "tls"\n[client.transport.tls]\ntrusted_root = "{d / "cert.pem"}"\n'
                f'hostname = "localhost"\n')


class RatholeNoise(Rathole):
    def transports(self, d):
        out = subprocess.run([str(PEERS / "rathole"), "--genkey"], capture_output=True, text=True, check=True).stdout
        private, public = re.findall(r"Key:\s*\n(\S+)", out)
        return (f'[server.transport]\ntype = "noise"\n[server.transport.noise]\nlocal_private_key = "{private}"\n',
                f'[client.transport]\ntype = "noise"\n[client.transport.noise]\nremote_public_key = "{public}"\n')


_namespace_ports = itertools.count(20000)


def free_port_in(netns):
    """A free TCP port: inside the harness's fresh namespaces any unused number is free."""
    return next(_namespace_ports) if netns else harness.free_port()


SYSTEMS = {"rathole-tls": RatholeTls, "rathole-noise": RatholeNoise, "bore": Bore}
