//! A frame's claimed length costs nothing until its bytes arrive: a peer that announces the
//! largest control frame and sends ten bytes makes the reader allocate about ten bytes, not
//! 64 KiB. Its own test binary, with jemalloc counting what this thread allocates.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll, Waker},
};

use burrow_common::{
    Hello,
    protocol::{MAX_CONTROL_FRAME, read_msg},
};
use tikv_jemalloc_ctl::thread;
use tokio::io::{AsyncRead, ReadBuf};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Well under the claimed length: what reading a few bytes may cost.
const MOST_ALLOCATED: u64 = 4 * 1024;

/// Yields a frame header claiming [`MAX_CONTROL_FRAME`] bytes and ten of them, then waits
/// forever, as a peer that stops sending would.
struct Trickle {
    sent: Vec<u8>,
    at: usize,
}

impl AsyncRead for Trickle {
    fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.at == self.sent.len() {
            return Poll::Pending;
        }
        let n = buf.remaining().min(self.sent.len() - self.at);
        let at = self.at;
        buf.put_slice(&self.sent[at..at + n]);
        self.at += n;
        Poll::Ready(Ok(()))
    }
}

#[test]
fn a_claimed_length_is_not_allocated_before_its_bytes_arrive() -> anyhow::Result<()> {
    let claimed = u32::try_from(MAX_CONTROL_FRAME)?;
    let sent = [&claimed.to_be_bytes()[..], &[7u8; 10]].concat();
    let mut reader = Trickle { sent, at: 0 };
    let unreadable = |e: tikv_jemalloc_ctl::Error| anyhow::anyhow!("jemalloc's thread.allocatedp: {e}");
    let allocated = thread::allocatedp::mib().map_err(unreadable)?.read().map_err(unreadable)?;
    let mut reading = Box::pin(read_msg::<_, Hello>(&mut reader, MAX_CONTROL_FRAME));
    let mut context = Context::from_waker(Waker::noop());
    let before = allocated.get();
    let polled = reading.as_mut().poll(&mut context);
    let used = allocated.get() - before;
    assert!(polled.is_pending(), "the frame is not complete");
    assert!(used < MOST_ALLOCATED, "reading ten bytes of a frame allocated {used} bytes");
    Ok(())
}
