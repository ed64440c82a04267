//! etcd for tests outside Rust (the browser tests): starts `testkit::etcd` on loopback, writes
//! the relay's `store.url` for it to a ready file as JSON, and stops etcd at SIGTERM or SIGINT.
//!
//! `etcd-env --ready-file FILE`

use std::path::PathBuf;

use testkit::etcd::Etcd;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let ready_file: PathBuf = match args.as_slice() {
        [flag, file] if flag == "--ready-file" => file.into(),
        _ => anyhow::bail!("usage: etcd-env --ready-file FILE"),
    };
    if !Etcd::available()? {
        anyhow::bail!("etcd is not installed (scripts/test installs it)");
    }
    let etcd = Etcd::start().await?;
    let ready = serde_json::json!({ "url": etcd.url() });
    testkit::env_program::publish_ready(&ready_file, &ready)?;
    testkit::env_program::until_stopped().await?;
    drop(etcd);
    Ok(())
}
