#!/usr/bin/env python3
"""The game-like visitor of bench/udp.py, and the UDP echo it talks to.

    udp_game.py echo HOST PORT                          echo every datagram to its sender
    udp_game.py play HOST PORT SECONDS RATE SIZE        RATE datagrams of SIZE bytes a second
                                                        for SECONDS, each timed until its echo

`play` first sends one datagram a tenth of a second until one comes back (the tunnel's flow
is set up then, as a game's first packets set it up), then the measured stream. Each
datagram carries its sequence number; echoes are matched to it, so reordering and duplicates
do not count twice. It prints JSON: how many were sent and each echo's round trip in ms, in
sequence order. An echo later than LATE_S after its datagram counts as lost, as it would to a
game. Bounded in time.
"""

import json
import socket
import struct
import sys
import threading
import time

HEADER = struct.Struct("!Q")
# An echo this late is of no use to a game: it counts as lost.
LATE_S = 1.0
# The first echo must come back within this, or the path is down.
SETUP_S = 10.0


def echo(host, port):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, port))
    print("listening", flush=True)
    while True:
        data, peer = sock.recvfrom(65536)
        sock.sendto(data, peer)


def set_up(sock, size):
    """Sends warm-up datagrams (sequence 2**64-1) until one is echoed."""
    warm_up = HEADER.pack(2**64 - 1).ljust(size, b"w")
    deadline = time.monotonic() + SETUP_S
    sock.settimeout(0.1)
    while time.monotonic() < deadline:
        sock.send(warm_up)
        try:
            if sock.recv(65536)[: HEADER.size] == warm_up[: HEADER.size]:
                return
        except (TimeoutError, socket.timeout, ConnectionRefusedError):
            pass
    raise TimeoutError(f"no echo within {SETUP_S} s")


def play(host, port, seconds, rate, size):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((host, port))
    set_up(sock, size)
    count = int(seconds * rate)
    sent_at = [0.0] * count
    rtts = [None] * count
    done = threading.Event()

    def receive():
        sock.settimeout(0.05)
        while not done.is_set():
            try:
                data = sock.recv(65536)
            except (TimeoutError, socket.timeout, ConnectionRefusedError):
                continue
            now = time.monotonic()
            (seq,) = HEADER.unpack_from(data)
            if seq < count and rtts[seq] is None and now - sent_at[seq] <= LATE_S:
                rtts[seq] = (now - sent_at[seq]) * 1000

    receiver = threading.Thread(target=receive, daemon=True)
    receiver.start()
    start = time.monotonic()
    for seq in range(count):
        # Paced on a fixed schedule: a late send is not followed by a burst.
        delay = start + seq / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        sent_at[seq] = time.monotonic()
        sock.send(HEADER.pack(seq).ljust(size, b"g"))
    time.sleep(LATE_S)
    done.set()
    receiver.join()
    print(json.dumps({"sent": count, "rtts_ms": rtts}))


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "echo":
        echo(sys.argv[2], int(sys.argv[3]))
    elif len(sys.argv) == 7 and sys.argv[1] == "play":
        play(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
