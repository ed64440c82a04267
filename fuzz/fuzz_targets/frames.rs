//! Every frame decoder on arbitrary bytes: it may refuse them, never panic, hang or allocate
//! past the frame's cap (libFuzzer's -rss_limit_mb catches the last).
#![no_main]

use std::{
    pin::pin,
    task::{Context, Poll, Waker},
};

use burrow_common::{
    AgentMsg, LinkOpening, ServerMsg, StreamHeader,
    protocol::{MAX_CONTROL_FRAME, MAX_HEADER_FRAME, read_msg},
};
use libfuzzer_sys::fuzz_target;

/// Runs a read from a byte slice to completion: a slice never makes a reader wait.
fn complete<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("a read from a byte slice waited"),
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = complete(read_msg::<_, LinkOpening>(&mut &data[..], MAX_CONTROL_FRAME));
    let _ = complete(read_msg::<_, ServerMsg>(&mut &data[..], MAX_CONTROL_FRAME));
    let _ = complete(read_msg::<_, StreamHeader>(&mut &data[..], MAX_HEADER_FRAME));
    let _ = complete(read_msg::<_, AgentMsg>(&mut &data[..], MAX_CONTROL_FRAME));
});
