#!/usr/bin/env python3
"""Opens COUNT connections to 127.0.0.1:PORT at once; each sends GET /1k and records the
time to the first response byte. Prints the times in ms as JSON. Bounded by a timeout."""

import asyncio
import json
import sys
import time

REQUEST = b"GET /1k HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"


async def one(port):
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(REQUEST)
    await writer.drain()
    first = await reader.read(1)
    ttfb = (time.perf_counter() - started) * 1e3
    if not first:
        raise RuntimeError("closed before the first byte")
    await reader.read()
    writer.close()
    return ttfb


async def main(port, count):
    return await asyncio.wait_for(asyncio.gather(*(one(port) for _ in range(count))), timeout=30)


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))))
