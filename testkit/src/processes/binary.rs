//! One child process with its output kept for the test: stdout lines on a channel (so a test
//! can wait for what a user would read) and stderr lines with when they were printed. Both
//! are read on threads of their own, so a child never stalls on a full pipe, even while the
//! test's runtime is busy generating load.

use std::{
    io::BufRead,
    os::fd::OwnedFd,
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use nix::{sys::signal::Signal, unistd::Pid};
use tokio::{
    process::{Child, Command},
    sync::{mpsc, oneshot, watch},
};

/// Upper bound for a process to start, print or exit; a hang guard only.
pub(crate) const STARTUP: Duration = Duration::from_secs(30);

pub struct Binary {
    child: Child,
    stdout: mpsc::UnboundedReceiver<String>,
    stderr: Arc<watch::Sender<Vec<(Instant, String)>>>,
    /// Resolves once stderr has been read to its end; taken by the first wait for it.
    stderr_read: Option<oneshot::Receiver<()>>,
}

impl Binary {
    pub fn start(command: &mut Command) -> anyhow::Result<Self> {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("start process")?;
        let (lines, stdout) = mpsc::unbounded_channel();
        let out = child.stdout.take().context("stdout is piped")?.into_owned_fd()?;
        each_line(out, move |line| drop(lines.send(line)));
        let stderr = Arc::new(watch::Sender::new(Vec::new()));
        let log = stderr.clone();
        let err = child.stderr.take().context("stderr is piped")?.into_owned_fd()?;
        let stderr_read = each_line(err, move |line| log.send_modify(|lines| lines.push((Instant::now(), line))));
        Ok(Self { child, stdout, stderr, stderr_read: Some(stderr_read) })
    }

    /// Waits for a stdout line containing `marker` and returns it: for what a user reads,
    /// not for addresses (those are in the ready file).
    pub async fn line_with(&mut self, marker: &str) -> anyhow::Result<String> {
        let found = tokio::time::timeout(STARTUP, async {
            while let Some(line) = self.stdout.recv().await {
                if line.contains(marker) {
                    return Some(line);
                }
            }
            None
        });
        match found.await {
            Ok(Some(line)) => Ok(line),
            Ok(None) => anyhow::bail!("stdout ended before a line with {marker:?}; stderr:\n{}", self.stderr_text()),
            Err(_) => anyhow::bail!("no line with {marker:?} in {STARTUP:?}; stderr:\n{}", self.stderr_text()),
        }
    }

    /// Stderr lines containing `marker` so far, with when they were printed.
    pub fn stderr_lines_with(&self, marker: &str) -> Vec<(Instant, String)> {
        self.stderr.borrow().iter().filter(|(_, line)| line.contains(marker)).cloned().collect()
    }

    /// Waits for a stderr line containing `marker` (a log line reaches the test a little
    /// after what it reports has happened) and returns it.
    pub async fn stderr_line_with(&self, marker: &str) -> anyhow::Result<String> {
        let mut lines = self.stderr.subscribe();
        let found = tokio::time::timeout(STARTUP, lines.wait_for(|log| log.iter().any(|(_, l)| l.contains(marker))))
            .await
            .map(|log| log.ok().and_then(|log| log.iter().map(|(_, l)| l.clone()).find(|l| l.contains(marker))));
        found.ok().flatten().with_context(|| format!("no stderr line with {marker:?}; stderr:\n{}", self.stderr_text()))
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.borrow().iter().map(|(_, line)| format!("{line}\n")).collect()
    }

    pub fn pid(&self) -> anyhow::Result<u32> {
        self.child.id().context("the process has exited")
    }

    pub fn vm_rss_kib(&self) -> anyhow::Result<u64> {
        vm_rss_kib(self.pid()?)
    }

    /// CPU time (user + system) the process has used so far.
    pub fn cpu_time(&self) -> anyhow::Result<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()?))?;
        // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
        let fields: Vec<&str> = stat.rsplit_once(')').context("stat format")?.1.split_whitespace().collect();
        let ticks: u64 =
            fields.get(11).context("utime")?.parse::<u64>()? + fields.get(12).context("stime")?.parse::<u64>()?;
        let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.context("CLK_TCK")?;
        Ok(Duration::from_secs_f64(ticks as f64 / per_second as f64))
    }

    /// Ends the process with SIGKILL, as a crash or the OOM killer would.
    pub async fn kill_hard(mut self) -> anyhow::Result<()> {
        self.child.kill().await.context("kill -9")
    }

    /// Sends SIGTERM, as a service manager stops it; returns the exit code.
    pub async fn terminate(self) -> anyhow::Result<i32> {
        let pid = i32::try_from(self.pid()?).context("pid")?;
        nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGTERM).context("kill -TERM")?;
        Ok(self.exit(STARTUP).await?.0)
    }

    /// Waits for the process to exit by itself; returns its exit code and all of its stderr.
    pub async fn exit(mut self, within: Duration) -> anyhow::Result<(i32, String)> {
        let status = tokio::time::timeout(within, self.child.wait()).await.context("still running")??;
        self.stderr_to_the_end(within).await?;
        Ok((status.code().context("ended by a signal")?, self.stderr_text()))
    }

    /// Waits until all the process wrote to stderr has been read: once it has exited, the
    /// last lines may still be on their way.
    pub async fn stderr_to_the_end(&mut self, within: Duration) -> anyhow::Result<()> {
        if let Some(read) = self.stderr_read.take() {
            // An error means the reading thread is gone, and with it any more stderr.
            tokio::time::timeout(within, read).await.context("stderr still open")?.ok();
        }
        Ok(())
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// Hands each line of `stream` to `handle` on a thread that ends at end of stream (the
/// child's exit); the receiver resolves then.
fn each_line(stream: OwnedFd, mut handle: impl FnMut(String) + Send + 'static) -> oneshot::Receiver<()> {
    let (read, finished) = oneshot::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(std::fs::File::from(stream)).lines() {
            let Ok(line) = line else { break };
            handle(line);
        }
        read.send(()).ok();
    });
    finished
}

/// Resident memory (VmRSS) of a process, in KiB.
pub fn vm_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("VmRSS in /proc status")?;
    Ok(line.split_whitespace().nth(1).context("VmRSS value")?.parse()?)
}
