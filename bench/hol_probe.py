#!/usr/bin/env python3
"""The interactive visitor of bench/hol.py, and the echo server it talks to.

    hol_probe.py serve PORT                     echo every byte back, on 127.0.0.1:PORT
    hol_probe.py probe PORT SECONDS INTERVAL_MS one connection; every INTERVAL_MS a 64-byte
                                                message, timed until all of it is echoed back

`probe` prints the round trips in ms as JSON. A message whose answer is late is followed by
the next one at once, not by a burst of the missed ones. Bounded by a timeout.
"""

import asyncio
import json
import sys
import time

MESSAGE = 64
# No single round trip may take longer than this, or the probe fails.
TIMEOUT_S = 30


async def echo(reader, writer):
    while data := await reader.read(1 << 16):
        writer.write(data)
        await writer.drain()
    writer.close()


async def serve(port):
    server = await asyncio.start_server(echo, "127.0.0.1", port)
    print("listening", flush=True)
    async with server:
        await server.serve_forever()


async def probe(port, seconds, interval_ms):
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), TIMEOUT_S)
    sock = writer.get_extra_info("socket")
    if sock is not None:
        import socket

        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    rtts, payload = [], bytes(range(MESSAGE))
    started = time.monotonic()
    next_send = started
    while time.monotonic() - started < seconds:
        await asyncio.sleep(max(0.0, next_send - time.monotonic()))
        sent = time.perf_counter()
        writer.write(payload)
        await writer.drain()
        echoed = await asyncio.wait_for(reader.readexactly(MESSAGE), TIMEOUT_S)
        rtts.append((time.perf_counter() - sent) * 1e3)
        if echoed != payload:
            raise RuntimeError("the echo differs from the message")
        next_send = max(next_send + interval_ms / 1e3, time.monotonic())
    writer.close()
    return rtts


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        asyncio.run(serve(int(sys.argv[2])))
    else:
        print(json.dumps(asyncio.run(probe(int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])))))
