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
    assert_eq!(text(&listed.stdout), "alice\tports: 22,8000-8100\n");
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
