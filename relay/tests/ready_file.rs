//! The compiled relay's `--ready-file`: the facts of its banner as one JSON object, for
//! scripts and tests. Run with `cargo test -p burrow-relay --test ready_file`.

use testkit::{
    STEP,
    processes::{Binary, RelayBinary},
};

#[tokio::test]
async fn the_relay_ready_file_says_what_its_banner_says() -> anyhow::Result<()> {
    let mut relay = RelayBinary::start(&[]).await?;
    let ready = relay.ready.clone();
    assert_eq!(ready.pid, relay.process.pid()?);
    assert_eq!((ready.http, ready.https), (None, None), "no domain, no HTTP ports");
    let admin = relay.admin()?;
    let token = relay.token()?.to_string();
    let banner = &mut relay.process;
    let agents = banner.line_with("agents connect to").await?;
    let tcp = ready.tcp.expect("the TCP agent port is on by default");
    assert_eq!(tcp.port(), ready.quic.port(), "one port number for both transports");
    assert!(agents.contains(&format!("udp {}, or tcp {tcp} where UDP is blocked", ready.quic)), "{agents}");
    let data_dir = banner.line_with("data directory").await?;
    assert!(data_dir.ends_with(&ready.data_dir.display().to_string()), "{data_dir}");
    assert!(banner.line_with("fingerprint").await?.ends_with(&ready.fingerprint.to_string()));
    assert!(banner.line_with("metrics").await?.contains(&format!("http://{admin}/metrics")));
    assert!(banner.line_with("new token").await?.contains(&token));
    assert_eq!(relay.process.terminate().await?, 0);
    Ok(())
}

#[tokio::test]
async fn a_relay_whose_ready_file_cannot_be_written_stops_and_says_where() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut command = RelayBinary::loopback_command(&dir.path().join("data"))?;
    let unwritable = dir.path().join("missing/ready.json");
    let (code, stderr) = Binary::start(command.arg("--ready-file").arg(&unwritable))?.exit(STEP).await?;
    assert_eq!(code, 1);
    assert!(stderr.contains(&format!("cannot write ready file {}", unwritable.display())), "{stderr}");
    Ok(())
}
