"""nginx as the benchmark's second HTTP server, beside `bench-http` (hyper).

How fast a tunnel serves small requests depends on the server behind it (how it batches its
writes, how many segments a response takes), so the HTTP figures are measured against both.
The harness starts its own nginx: one process, a generated config in a temporary directory,
files /1k and /1m of exactly those sizes, on a free port of 127.0.0.1; `stop()` removes it all.
"""

import shutil
import tempfile
from pathlib import Path

import harness

CONFIG = """\
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{
    worker_connections 8192;
}}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    # Like bench-http, keep a connection for as long as the client wants: a tunnel would
    # otherwise pay for new connections that bench-http never asks of it.
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {dir}/www;
    }}
}}
"""


def binary():
    """The nginx executable, or None when it is not installed (`bench/run` installs it)."""
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)


class Nginx:
    """One nginx process serving /1k and /1m; `port` is where it listens."""

    def __init__(self):
        executable = binary()
        if executable is None:
            raise RuntimeError("nginx is not installed: `bench/run` installs the Debian package")
        self.dir = tempfile.TemporaryDirectory(prefix="burrow-nginx-")
        d = Path(self.dir.name)
        (d / "www").mkdir()
        (d / "www" / "1k").write_bytes(b"x" * 1024)
        (d / "www" / "1m").write_bytes(b"x" * (1 << 20))
        self.port = harness.free_port()
        (d / "nginx.conf").write_text(CONFIG.format(dir=d, port=self.port))
        self.process = harness.Process([executable, "-p", str(d), "-c", str(d / "nginx.conf"), "-e", str(d / "error.log")],
                                       quiet=True)
        try:
            harness.wait_for_port(self.port)
        except OSError as error:
            self.stop()
            log = (d / "error.log").read_text() if (d / "error.log").exists() else ""
            raise RuntimeError(f"nginx did not start on 127.0.0.1:{self.port}: {log[-2000:]}") from error

    @property
    def pid(self):
        return self.process.pid

    def stop(self):
        self.process.stop()
        self.dir.cleanup()
