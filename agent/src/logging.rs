//! Log output: text or JSON lines on stderr, filtered by `RUST_LOG`. While the console draws
//! on the terminal, text lines go to it instead, so it can print them above its view rather
//! than have them tear it.

use std::io::{IsTerminal, Write};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing_subscriber::{EnvFilter, fmt::MakeWriter};

/// `log_format` in the config, `--log-format` on the command line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors; turns off the live console.
    Json,
}

impl<'de> Deserialize<'de> for LogFormat {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match String::deserialize(d)?.as_str() {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(serde::de::Error::custom(format!("invalid value {other:?}: expected text or json"))),
        }
    }
}

/// Lines the console has not printed yet; a burst beyond this is dropped, not queued.
const CONSOLE_BACKLOG: usize = 1024;

/// Installs the global subscriber. With `to_console`, returns the lines for the console.
pub(crate) fn init(format: LogFormat, to_console: bool) -> Option<mpsc::Receiver<String>> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false);
    match format {
        LogFormat::Json => {
            builder.json().with_writer(std::io::stderr).init();
            None
        }
        LogFormat::Text if to_console => {
            let (lines, receiver) = mpsc::channel(CONSOLE_BACKLOG);
            builder.with_ansi(true).with_writer(ConsoleLog(lines)).init();
            Some(receiver)
        }
        LogFormat::Text => {
            builder.with_ansi(std::io::stderr().is_terminal()).with_writer(std::io::stderr).init();
            None
        }
    }
}

struct ConsoleLog(mpsc::Sender<String>);

impl<'a> MakeWriter<'a> for ConsoleLog {
    type Writer = LogLine;

    fn make_writer(&'a self) -> LogLine {
        LogLine { text: Vec::new(), console: self.0.clone() }
    }
}

/// One event's text, handed over whole when the formatter is done with it.
struct LogLine {
    text: Vec<u8>,
    console: mpsc::Sender<String>,
}

impl Write for LogLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.text.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        if self.text.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(&self.text).into_owned();
        // Once the console has stopped, lines go straight to the terminal again.
        if let Err(mpsc::error::TrySendError::Closed(text)) = self.console.try_send(text) {
            eprint!("{text}");
        }
    }
}
