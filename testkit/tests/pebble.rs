//! The Pebble environment the relay's ACME tests run against: its directory answers, it
//! hands out this run's issuer root, and the DNS hook publishes and withdraws TXT records
//! that Pebble's DNS server then answers. `cargo test -p burrow-testkit --test pebble`

use std::{path::Path, time::Duration};

use anyhow::Context;
use testkit::{
    STEP,
    pebble::{Pebble, PebbleOptions},
    processes::required,
};

const RECORD: &str = "_acme-challenge.burrow.test";

#[tokio::test]
async fn pebble_answers_its_directory_and_the_hook_sets_and_clears_txt_records() -> anyhow::Result<()> {
    if !Pebble::available()? || !required("dig")? {
        return Ok(());
    }
    let (http, tls) = (testkit::closed_port().await?.port(), testkit::closed_port().await?.port());
    let pebble = Pebble::start(PebbleOptions::new(http, tls).validity(Duration::from_secs(90))).await?;
    check(&pebble).await.with_context(|| pebble.logs())
}

async fn check(pebble: &Pebble) -> anyhow::Result<()> {
    let client = testkit::http::client_trusting(&std::fs::read(pebble.listener_ca_pem_path())?)?;
    let directory = client.get(pebble.directory_url()).send().await?.error_for_status()?.bytes().await?;
    let directory: serde_json::Value = serde_json::from_slice(&directory)?;
    assert!(directory["newOrder"].as_str().is_some_and(|url| url.starts_with("https://127.0.0.1:")), "{directory}");
    assert!(pebble.issuer_root_pem().starts_with("-----BEGIN CERTIFICATE-----"), "{}", pebble.issuer_root_pem());
    assert_eq!(std::fs::read_to_string(pebble.issuer_root_path())?, pebble.issuer_root_pem());
    let log = std::fs::read_to_string(pebble.pebble_log_path())?;
    assert!(log.contains("Using certificate validity period of 90 seconds"), "{log}");
    assert_eq!((pebble.orders_created()?, pebble.certificates_issued()?), (0, 0));

    hook(pebble.dns_hook_path(), &["set", RECORD, "first-value_0123"]).await?;
    hook(pebble.dns_hook_path(), &["set", RECORD, "second-value"]).await?;
    let mut values = txt(pebble, RECORD).await?;
    values.sort();
    assert_eq!(values, ["\"first-value_0123\"", "\"second-value\""]);
    hook(pebble.dns_hook_path(), &["clear", RECORD, "first-value_0123"]).await?;
    assert!(txt(pebble, RECORD).await?.is_empty());
    Ok(())
}

async fn hook(path: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = tokio::process::Command::new(path).args(args).kill_on_drop(true).output();
    let out = tokio::time::timeout(STEP, out).await.context("the DNS hook hung")??;
    anyhow::ensure!(out.status.success(), "hook {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// The TXT values Pebble's DNS server gives for `name`, quoted as dig prints them.
async fn txt(pebble: &Pebble, name: &str) -> anyhow::Result<Vec<String>> {
    let server = pebble.dns_addr();
    let mut dig = tokio::process::Command::new("dig");
    dig.arg(format!("@{}", server.ip())).args(["-p", &server.port().to_string()]);
    dig.args(["+short", "+tries=1", "+timeout=2", "TXT", name]);
    let out = tokio::time::timeout(STEP, dig.kill_on_drop(true).output()).await.context("dig hung")??;
    anyhow::ensure!(out.status.success(), "dig: {}", String::from_utf8_lossy(&out.stdout));
    Ok(String::from_utf8(out.stdout)?.lines().map(str::to_owned).collect())
}
