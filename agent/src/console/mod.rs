//! The live console on a terminal: a status view redrawn in place about once a second and at
//! each change, with log lines printed above it. Plain ANSI: move up over the last view,
//! overwrite it line by line, clear what is left. Auto-wrap is off while the view is drawn,
//! so a line wider than the terminal is cut instead of taking two rows and throwing off the
//! count of rows to move up over next time.

mod flows;
mod rates;
mod view;

use std::{
    io::IsTerminal,
    time::{Duration, Instant},
};

use tokio::{io::AsyncWriteExt, sync::mpsc};
use tokio_util::sync::CancellationToken;

use crate::{logging::LogFormat, report::Setup, stats::Stats};

const REDRAW: Duration = Duration::from_secs(1);
/// At most this often, so a burst of connections costs a few redraws, not thousands.
const MIN_GAP: Duration = Duration::from_millis(100);

/// The console runs only where a person watches: a terminal that can move the cursor, and
/// no request for machine-readable logs.
pub(crate) fn wanted(format: LogFormat) -> bool {
    format == LogFormat::Text
        && std::io::stdout().is_terminal()
        && std::env::var("TERM").map_or(true, |term| term != "dumb")
}

/// Draws until `done`, then once more, so the final state stays on screen.
pub(crate) async fn run(stats: Stats, setup: Setup, logs: Option<mpsc::Receiver<String>>, done: CancellationToken) {
    let mut screen = Screen { drawn: 0, paint: view::Paint(std::env::var_os("NO_COLOR").is_none()) };
    let mut rates = rates::Rates::default();
    let mut changes = stats.subscribe();
    let (mut logs, mut pending) = (logs, Vec::new());
    let mut tick = tokio::time::interval(REDRAW);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = Instant::now();
    loop {
        let stop = tokio::select! {
            _ = done.cancelled() => true,
            _ = tick.tick() => false,
            _ = changes.changed() => false,
            Some(line) = next_log(&mut logs) => {
                pending.push(line);
                false
            }
        };
        if let Some(logs) = &mut logs {
            while let Ok(line) = logs.try_recv() {
                pending.push(line);
            }
        }
        if !stop && pending.is_empty() && last.elapsed() < MIN_GAP {
            tokio::time::sleep(MIN_GAP - last.elapsed()).await;
        }
        changes.mark_unchanged();
        let snapshot = stats.snapshot();
        rates.update(&snapshot, Instant::now());
        let lines = view::render(&snapshot, &rates, &setup, screen.paint);
        let frame = screen.frame(&std::mem::take(&mut pending), &lines);
        last = Instant::now();
        // A terminal that cannot be written to has nobody watching; stop drawing.
        if write(&frame).await.is_err() || stop {
            break;
        }
    }
    // Later log lines go straight to stderr once the receiver is gone.
    drop(logs);
}

async fn next_log(logs: &mut Option<mpsc::Receiver<String>>) -> Option<String> {
    match logs {
        Some(logs) => logs.recv().await,
        None => std::future::pending().await,
    }
}

async fn write(frame: &str) -> std::io::Result<()> {
    let mut stdout = tokio::io::stdout();
    stdout.write_all(frame.as_bytes()).await?;
    stdout.flush().await
}

/// What is on the terminal: the rows of the last view, which the next frame overwrites.
struct Screen {
    drawn: usize,
    paint: view::Paint,
}

impl Screen {
    /// The bytes that print `logs` where the last view was and draw `lines` below them.
    fn frame(&mut self, logs: &[String], lines: &[String]) -> String {
        let mut out = String::from("\r");
        if self.drawn > 0 {
            out.push_str(&format!("\x1b[{}A", self.drawn));
        }
        for log in logs {
            // Each row is cleared to its end, as it may hold part of the old view.
            out.push_str(&log.trim_end_matches('\n').replace('\n', "\x1b[K\n"));
            out.push_str("\x1b[K\n");
        }
        out.push_str("\x1b[?7l");
        for line in lines {
            out.push_str(line);
            out.push_str("\x1b[K\n");
        }
        out.push_str("\x1b[J\x1b[?7h");
        self.drawn = lines.len();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_moves_up_over_the_last_view_and_keeps_logs_above_the_new_one() {
        let mut screen = Screen { drawn: 0, paint: view::Paint(false) };
        let first = screen.frame(&[], &["a".into(), "b".into()]);
        assert_eq!(first, "\r\x1b[?7la\x1b[K\nb\x1b[K\n\x1b[J\x1b[?7h");
        let second = screen.frame(&["log\n".into()], &["c".into()]);
        assert_eq!(second, "\r\x1b[2Alog\x1b[K\n\x1b[?7lc\x1b[K\n\x1b[J\x1b[?7h");
        assert_eq!(screen.drawn, 1);
    }
}
