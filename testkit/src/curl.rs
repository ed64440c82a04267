//! curl, as a user would run it against a tunnel: its status code and body, or its own error
//! (a certificate it does not trust, a refused connection) as the error.

use anyhow::Context;
use tokio::process::Command;

/// Runs `curl ARGS` quietly, bounded to 30 s; returns the status code and the body.
pub async fn curl(args: &[&str]) -> anyhow::Result<(u16, String)> {
    let output = Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "30", "--write-out", "\n%{http_code}"])
        .args(args)
        .output()
        .await
        .context("run curl (scripts/test installs it)")?;
    anyhow::ensure!(output.status.success(), "curl {args:?}: {}", String::from_utf8_lossy(&output.stderr).trim());
    let stdout = String::from_utf8(output.stdout)?;
    let (body, code) = stdout.rsplit_once('\n').context("status line from --write-out")?;
    Ok((code.parse()?, body.to_owned()))
}
