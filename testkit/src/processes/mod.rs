//! The compiled `relay` and `agent` binaries as child processes: for tests that read a
//! process's memory, signal it, or need it apart from the test's own runtime, and for the
//! fault suite and its network namespaces. Launchers learn addresses, fingerprint and token
//! from each binary's `--ready-file`, never from its banner.

mod agent;
mod binary;
mod canary;
mod ready_file;
mod relay;

use std::path::{Path, PathBuf};

use anyhow::Context;

pub use agent::{AgentBinary, tcp_addr};
pub use binary::{Binary, vm_rss_kib};
pub use canary::{Canary, Rounds};
pub use ready_file::ReadyFile;
pub use relay::RelayBinary;

/// A binary built by `cargo build --workspace --bins`, found from the running test: test
/// executables live in `target/<profile>/deps`, the workspace's binaries one level up.
pub fn binary_path(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().and_then(Path::parent).context("target directory")?;
    let path = dir.join(name);
    anyhow::ensure!(path.exists(), "{} is missing: run `cargo build --workspace --bins` first", path.display());
    Ok(path)
}

pub fn relay_bin() -> anyhow::Result<PathBuf> {
    binary_path("relay")
}

pub fn agent_bin() -> anyhow::Result<PathBuf> {
    binary_path("agent")
}

/// Set where the tests' programs are installed (scripts/test sets it when it installs them as
/// root), so a missing one fails the tests that need it instead of skipping them. Not under
/// `BURROW_`: the agent takes every `BURROW_*` variable for a setting.
pub const REQUIRE_ENV: &str = "REQUIRE_TEST_TOOLS";

/// Whether `program` is on the PATH, as [`installed`]; an error instead of `false` where
/// [`REQUIRE_ENV`] is set, so a machine that should run every test cannot pass by skipping.
pub fn required(program: &str) -> anyhow::Result<bool> {
    let found = installed(program);
    anyhow::ensure!(
        found || std::env::var_os(REQUIRE_ENV).is_none(),
        "{REQUIRE_ENV} is set but {program} is not installed"
    );
    Ok(found)
}

/// Whether `program` is on the PATH; says so on stdout when it is not, so a skipped test
/// shows in the output rather than passing silently.
pub fn installed(program: &str) -> bool {
    let found = std::process::Command::new("sh").arg("-c").arg(format!("command -v {program}")).output();
    let found = found.is_ok_and(|out| out.status.success());
    if !found {
        println!("{program} not installed (scripts/test installs it, as root): skipped");
    }
    found
}
