#!/usr/bin/env python3
"""Hold every packet of one NFQUEUE for a fixed delay, then accept it.

A stand-in for `tc qdisc ... netem delay` on kernels built without sch_netem.
iptables sends the packets of the link to `-j NFQUEUE --queue-num N`; this
program binds that queue over a raw AF_NETLINK/NETLINK_NETFILTER socket
(nfnetlink_queue protocol, Python stdlib only), asks for metadata only
(NFQNL_COPY_META: the payload never reaches user space), and gives each packet
an NF_ACCEPT verdict DELAY_MS after it was queued.  The delay is constant, so
packets leave in the order they came; every wake-up releases all packets that
are due with one batch verdict.

Fail-closed: if this process dies, the kernel drops the link's packets (the
iptables rule has no --queue-bypass), so a broken delayer looks like an outage,
never like a fast link.

SIGTERM/SIGINT: stop taking new packets, release the held ones at their due
time (at most DELAY_MS later), unbind and exit 0.  A second signal exits at
once.  Nothing is printed unless something goes wrong.

Run it in the namespace that owns the queue:
    ip netns exec NS python3 delay.py --queue 0 --delay-ms 25
"""

import argparse
import collections
import errno
import os
import select
import signal
import socket
import struct
import sys
import time

# <linux/netlink.h>
NETLINK_NETFILTER = 12
NLMSG_ERROR = 2
NLM_F_REQUEST = 0x01
NLM_F_ACK = 0x04
SOL_NETLINK = 270
SO_RCVBUFFORCE = 33
# <linux/netfilter/nfnetlink.h>, <linux/netfilter/nfnetlink_queue.h>
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = 0
NFQNL_MSG_CONFIG = 2
NFQNL_MSG_VERDICT_BATCH = 3
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_CFG_QUEUE_MAXLEN = 3
NFQNL_CFG_CMD_BIND = 1
NFQNL_CFG_CMD_UNBIND = 2
NFQNL_COPY_META = 1
NF_ACCEPT = 1

MSG_PACKET = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET
NLMSGHDR = struct.Struct("=IHHII")   # len, type, flags, seq, portid (host order)
NLATTR = struct.Struct("=HH")        # len, type (host order)
BE32 = struct.Struct("!I")
HDR_LEN = NLMSGHDR.size + 4          # nlmsghdr + nfgenmsg

PROG = "delay.py"


def err(msg):
    sys.stderr.write("%s: %s\n" % (PROG, msg))
    sys.stderr.flush()


def attr(atype, payload):
    """One netlink attribute, padded to 4 bytes."""
    n = NLATTR.size + len(payload)
    return NLATTR.pack(n, atype) + payload + b"\0" * (-n & 3)


class NfQueue:
    """Just enough of nfnetlink_queue: bind, metadata-only copy, verdicts."""

    def __init__(self, num, maxlen, rcvbuf):
        self.num = num
        self.seq = int(time.time()) & 0xFFFF
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:  # root may exceed net.core.rmem_max; a big buffer absorbs bursts
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.bind((0, 0))
        self.buf = bytearray(1 << 16)
        self.early = []  # packet ids that arrived while we waited for an ack
        self.request(attr(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_BIND, socket.AF_INET)),
                     "bind queue %d" % num)
        self.request(attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META))
                     + attr(NFQA_CFG_QUEUE_MAXLEN, BE32.pack(maxlen)),
                     "set metadata-only copy mode")

    def fileno(self):
        return self.sock.fileno()

    def message(self, mtype, flags, body):
        self.seq = (self.seq + 1) & 0xFFFFFFFF
        payload = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(self.num)) + body
        return NLMSGHDR.pack(NLMSGHDR.size + len(payload), (NFNL_SUBSYS_QUEUE << 8) | mtype,
                             flags, self.seq, 0) + payload

    def request(self, attrs, what):
        """Send a config request and wait for its ack; raise on a kernel error."""
        self.sock.send(self.message(NFQNL_MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, attrs))
        want = self.seq
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            r, _, _ = select.select([self.sock], [], [], 0.5)
            if not r:
                continue
            n = self.sock.recv_into(self.buf)
            for mtype, seq, off, length in self.messages(n):
                if mtype == MSG_PACKET:
                    pid = self.packet_id(off, length)
                    if pid is not None:
                        self.early.append(pid)
                elif mtype == NLMSG_ERROR and seq == want:
                    code = struct.unpack_from("=i", self.buf, off + NLMSGHDR.size)[0]
                    if code:
                        raise OSError(-code, "%s: %s" % (what, os.strerror(-code)))
                    return
        raise TimeoutError("%s: no answer from the kernel" % what)

    def messages(self, n):
        """Yield (type, seq, offset, length) for each netlink message in buf[:n]."""
        off = 0
        buf = self.buf
        while off + NLMSGHDR.size <= n:
            length, mtype, _flags, seq, _pid = NLMSGHDR.unpack_from(buf, off)
            if length < NLMSGHDR.size or off + length > n:
                return
            yield mtype, seq, off, length
            off += (length + 3) & ~3

    def packet_id(self, off, length):
        """The packet id from NFQA_PACKET_HDR of a packet message, or None."""
        buf = self.buf
        a = off + HDR_LEN
        end = off + length
        while a + NLATTR.size <= end:
            alen, atype = NLATTR.unpack_from(buf, a)
            if alen < NLATTR.size:
                return None
            if atype & 0x3FFF == NFQA_PACKET_HDR:
                return BE32.unpack_from(buf, a + NLATTR.size)[0]
            a += (alen + 3) & ~3
        return None

    def receive(self, now_fn, out, limit):
        """Read up to `limit` queued packets without blocking.

        Appends (arrival_time, id) to `out`; returns how many messages were read.
        """
        sock = self.sock
        read = 0
        while read < limit:
            try:
                n = sock.recv_into(self.buf, 0, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            read += 1
            now = now_fn()
            for mtype, _seq, off, length in self.messages(n):
                if mtype == MSG_PACKET:
                    pid = self.packet_id(off, length)
                    if pid is not None:
                        out.append((now, pid))
                elif mtype == NLMSG_ERROR:
                    code = struct.unpack_from("=i", self.buf, off + NLMSGHDR.size)[0]
                    if code:
                        err("kernel rejected a verdict: %s" % os.strerror(-code))
        return read

    def accept_upto(self, pid):
        """NF_ACCEPT every queued packet whose id is <= pid (one batch verdict)."""
        self.sock.send(self.message(NFQNL_MSG_VERDICT_BATCH, NLM_F_REQUEST,
                                    attr(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT, pid))))

    def unbind(self):
        try:
            self.sock.send(self.message(NFQNL_MSG_CONFIG, NLM_F_REQUEST,
                                        attr(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_UNBIND, 0))))
        except OSError:
            pass
        self.sock.close()


def run(args):
    delay = args.delay_ms / 1000.0
    q = NfQueue(args.queue, args.maxlen, args.rcvbuf)

    # Signals wake select() through a socketpair (set_wakeup_fd), so an idle
    # delayer blocks without any polling timeout.
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)
    signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
    signals = []
    signal.signal(signal.SIGTERM, lambda s, f: signals.append(s))
    signal.signal(signal.SIGINT, lambda s, f: signals.append(s))
    signal.signal(signal.SIGHUP, signal.SIG_IGN)

    if args.ready_file:
        tmp = args.ready_file + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d\n" % os.getpid())
        os.rename(tmp, args.ready_file)

    now_fn = time.monotonic
    arrivals = collections.deque()  # (arrival time, packet id), in id order
    start = now_fn()
    arrivals.extend((start, pid) for pid in q.early)
    q.early = []
    rlist = [q, wake_r]
    last_enobufs = 0.0
    lost_reports = 0

    while True:
        if signals:
            if len(signals) > 1 or not arrivals:
                break
            rlist = [wake_r]  # draining: take no new packets

        if arrivals:
            timeout = arrivals[0][0] + delay - now_fn()
            if timeout < 0:
                timeout = 0
        else:
            timeout = None
        r, _, _ = select.select(rlist, [], [], timeout)

        if wake_r in r:
            try:
                while wake_r.recv(64):
                    pass
            except BlockingIOError:
                pass
        if q in r and not signals:
            try:
                # Bounded so that due packets are never starved by a flood.
                q.receive(now_fn, arrivals, 512)
            except OSError as e:
                if e.errno != errno.ENOBUFS:  # overflow: the kernel dropped packets
                    raise
                lost_reports += 1
                t = now_fn()
                if t - last_enobufs >= 1.0:
                    err("netlink socket overflowed (ENOBUFS x%d): the kernel dropped queued packets"
                        % lost_reports)
                    last_enobufs = t
                    lost_reports = 0

        if arrivals:
            cutoff = now_fn() - delay
            last = None
            while arrivals and arrivals[0][0] <= cutoff:
                last = arrivals.popleft()[1]
            if last is not None:
                q.accept_upto(last)

    q.unbind()
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--queue", type=int, required=True, help="NFQUEUE number (0-65535)")
    ap.add_argument("--delay-ms", type=float, required=True, help="delay added to every packet")
    ap.add_argument("--maxlen", type=int, default=16384,
                    help="kernel queue length in packets (default %(default)s)")
    ap.add_argument("--rcvbuf", type=int, default=8 << 20,
                    help="netlink receive buffer in bytes (default %(default)s)")
    ap.add_argument("--ready-file", help="write our PID here once the queue is bound")
    args = ap.parse_args()
    if not 0 <= args.queue <= 65535:
        ap.error("--queue must be 0..65535")
    if not 0 <= args.delay_ms <= 60000:
        ap.error("--delay-ms must be 0..60000")
    try:
        return run(args)
    except (OSError, TimeoutError) as e:
        err("queue %d: %s" % (args.queue, e))
        return 1


if __name__ == "__main__":
    sys.exit(main())
