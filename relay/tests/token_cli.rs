//! `relay token add|list|revoke` through the compiled binary.
//! Run with `cargo test -p burrow-relay --test token_cli`.

use std::process::{Command, Output};

fn relay(data_dir: &std::path::Path, args: &[&str]) -> anyhow::Result<Output> {
    Ok(Command::new(env!("CARGO_BIN_EXE_relay")).arg("--data-dir").arg(data_dir).args(args).output()?)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn tokens_are_printed_once_listed_by_name_and_revoked() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let added = relay(dir.path(), &["token", "add", "alice", "--ports", "22,8000-8100"])?;
    assert!(added.status.success(), "{}", text(&added.stderr));
    let token = text(&added.stdout).trim().to_string();
    assert!(token.starts_with("brw_") && token.len() == 47, "{token}");

    let listed = relay(dir.path(), &["token", "list"])?;
    assert_eq!(text(&listed.stdout), "alice\tports: 22,8000-8100\tsubdomains: all\thostnames: none\n");
    let stored = std::fs::read_to_string(dir.path().join("tokens.json"))?;
    assert!(!stored.contains(&token), "only the hash is stored");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("tokens.json"))?.permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let again = relay(dir.path(), &["token", "add", "alice"])?;
    assert!(!again.status.success());
    assert!(text(&again.stderr).contains("a token named \"alice\" already exists"));

    assert!(relay(dir.path(), &["token", "revoke", "alice"])?.status.success());
    assert_eq!(text(&relay(dir.path(), &["token", "list"])?.stdout), "");
    let missing = relay(dir.path(), &["token", "revoke", "alice"])?;
    assert!(!missing.status.success());
    assert!(text(&missing.stderr).contains("no token named \"alice\""));
    Ok(())
}

#[test]
fn bad_token_names_and_port_lists_are_rejected_with_the_expected_form() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let bad_name = relay(dir.path(), &["token", "add", "has space"])?;
    assert!(text(&bad_name.stderr).contains("expected 1-64 letters, digits"), "{}", text(&bad_name.stderr));
    let bad_ports = relay(dir.path(), &["token", "add", "bob", "--ports", "22,x"])?;
    assert!(text(&bad_ports.stderr).contains("invalid port range \"x\""), "{}", text(&bad_ports.stderr));
    assert_eq!(bad_ports.status.code(), Some(1));
    Ok(())
}

/// What a token may use is shown wherever tokens are listed: `relay token list`, the
/// invitation and the admin API.
#[tokio::test]
async fn name_patterns_and_closed_kinds_are_listed_and_shown() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let args = ["--ports", "none", "--subdomains", "app-*,docs", "--hostnames", "App.example.org,*.dev.example.org"];
    let added = relay(dir.path(), &[&["token", "add", "web-only"][..], &args].concat())?;
    assert!(added.status.success(), "{}", text(&added.stderr));
    let invited = relay(dir.path(), &["invite", "ssh-only", "--ports", "22", "--subdomains", "none"])?;
    assert!(invited.status.success(), "{}", text(&invited.stderr));
    assert!(
        text(&invited.stdout).contains("This token may use ports 22, subdomains none and hostnames none."),
        "{}",
        text(&invited.stdout)
    );
    let listed = relay(dir.path(), &["token", "list"])?;
    assert_eq!(
        text(&listed.stdout),
        "web-only\tports: none\tsubdomains: app-*,docs\thostnames: app.example.org,*.dev.example.org\n\
         ssh-only\tports: 22\tsubdomains: none\thostnames: none\n"
    );
    let bad = relay(dir.path(), &["token", "add", "bad", "--subdomains", "a*b*"])?;
    assert!(text(&bad.stderr).contains("invalid subdomain pattern \"a*b*\""), "{}", text(&bad.stderr));
    let bad = relay(dir.path(), &["token", "add", "bad", "--hostnames", "app.example.org,*.org"])?;
    assert!(!bad.status.success());
    assert!(
        text(&bad.stderr).contains("invalid hostname pattern \"*.org\": expected a full DNS name"),
        "{}",
        text(&bad.stderr)
    );

    let relay = testkit::TestRelay::start(dir.path()).await?;
    let admin = relay.admin.ok_or_else(|| anyhow::anyhow!("the test relay has an admin endpoint"))?;
    let (status, body) = testkit::admin::get(admin, "/api/tokens", None).await?;
    assert_eq!(status, 200, "{body}");
    let tokens: serde_json::Value = serde_json::from_str(&body)?;
    let shown = |name: &str| tokens.as_array().and_then(|all| all.iter().find(|t| t["name"] == name)).cloned();
    let web_only = shown("web-only").ok_or_else(|| anyhow::anyhow!("web-only listed: {tokens}"))?;
    assert_eq!((web_only["ports"].as_str(), web_only["subdomains"].as_str()), (Some("none"), Some("app-*,docs")));
    assert_eq!(web_only["hostnames"], "app.example.org,*.dev.example.org");
    let configured = shown("configured").ok_or_else(|| anyhow::anyhow!("configured listed: {tokens}"))?;
    assert_eq!((configured["subdomains"].as_str(), configured["hostnames"].as_str()), (Some("all"), Some("none")));
    relay.stop().await
}
