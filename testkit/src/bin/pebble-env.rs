//! Pebble for tests outside Rust (the browser tests): starts `testkit::pebble` validating on
//! the given ports, writes where everything is to a ready file as JSON, and stops Pebble at
//! SIGTERM or SIGINT.
//!
//! `pebble-env --http-port P --tls-port Q --ready-file FILE`

use std::path::PathBuf;

use anyhow::Context;
use testkit::pebble::{Pebble, PebbleOptions};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (http_port, tls_port, ready_file) = parse(std::env::args().skip(1).collect())?;
    if !Pebble::available()? {
        anyhow::bail!("pebble is not installed (scripts/test installs it)");
    }
    let pebble = Pebble::start(PebbleOptions::new(http_port, tls_port)).await?;
    let ready = serde_json::json!({
        "directory": pebble.directory_url(),
        "ca_root": pebble.listener_ca_pem_path(),
        "issuer_root": pebble.issuer_root_path(),
        "dns_hook": pebble.dns_hook_path(),
    });
    testkit::env_program::publish_ready(&ready_file, &ready)?;
    testkit::env_program::until_stopped().await?;
    drop(pebble);
    Ok(())
}

fn parse(args: Vec<String>) -> anyhow::Result<(u16, u16, PathBuf)> {
    let usage = "usage: pebble-env --http-port P --tls-port Q --ready-file FILE";
    let value = |flag: &str| {
        let at = args.iter().position(|a| a == flag).with_context(|| format!("{flag} missing; {usage}"))?;
        args.get(at + 1).cloned().with_context(|| format!("{flag} needs a value; {usage}"))
    };
    Ok((value("--http-port")?.parse()?, value("--tls-port")?.parse()?, value("--ready-file")?.into()))
}
