//! What Pebble and its DNS-01 hook read from the environment's directory: the certificate
//! Pebble's ACME and management listeners present, Pebble's JSON configuration, and the
//! hook script the relay runs to publish TXT records.

use std::{
    net::{Ipv4Addr, SocketAddr},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use anyhow::Context;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};

use super::PebbleOptions;

/// Paths of the listener certificate Pebble serves and of the CA that signed it.
pub(super) struct ListenerCert {
    pub(super) ca: PathBuf,
    pub(super) cert: PathBuf,
    pub(super) key: PathBuf,
}

/// A CA and a leaf it signed for `localhost` and 127.0.0.1. A leaf of its own rather than a
/// self-signed certificate, because rustls (in the ACME client) refuses a CA certificate
/// presented as a server's.
pub(super) fn write_listener_cert(dir: &Path) -> anyhow::Result<ListenerCert> {
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name.push(DnType::CommonName, "burrow test Pebble listener CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    let mut leaf_params = CertificateParams::new(vec!["localhost".to_string()])?;
    leaf_params.subject_alt_names.push(SanType::IpAddress(Ipv4Addr::LOCALHOST.into()));
    let leaf_key = KeyPair::generate()?;
    let leaf = leaf_params.signed_by(&leaf_key, &ca)?;
    let files = ListenerCert {
        ca: dir.join("listener-ca.pem"),
        cert: dir.join("listener.pem"),
        key: dir.join("listener-key.pem"),
    };
    write(&files.ca, ca.pem())?;
    write(&files.cert, leaf.pem())?;
    write(&files.key, leaf_key.serialize_pem())?;
    Ok(files)
}

/// Where Pebble listens and where it validates, as its `-config` file says.
pub(super) struct ConfigPorts {
    pub(super) acme: u16,
    pub(super) management: u16,
}

/// Writes Pebble's configuration: both listeners on loopback with `cert`, and the ports its
/// validation authority connects to. Go's JSON decoding ignores key case, so these are the
/// field names of Pebble 2.4's `config` struct (cmd/pebble/main.go).
pub(super) fn write_config(
    dir: &Path,
    ports: &ConfigPorts,
    cert: &ListenerCert,
    options: &PebbleOptions,
) -> anyhow::Result<PathBuf> {
    let validity = match options.validity {
        // Pebble reads 0 as its default (five years).
        Some(validity) => {
            anyhow::ensure!(validity.as_secs() > 0, "a certificate validity of whole seconds, at least one");
            validity.as_secs()
        }
        None => 0,
    };
    let config = serde_json::json!({ "pebble": {
        "listenAddress": SocketAddr::from((Ipv4Addr::LOCALHOST, ports.acme)).to_string(),
        "managementListenAddress": SocketAddr::from((Ipv4Addr::LOCALHOST, ports.management)).to_string(),
        "certificate": cert.cert,
        "privateKey": cert.key,
        "httpPort": options.http_port,
        "tlsPort": options.tls_port,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": false,
        "certificateValidityPeriod": validity,
    }});
    let path = dir.join("pebble-config.json");
    write(&path, serde_json::to_string_pretty(&config)?)?;
    Ok(path)
}

/// The DNS-01 hook: `HOOK set NAME VALUE` or `HOOK clear NAME VALUE`, NAME without its final
/// dot. It posts to pebble-challtestsrv's management API at `management`; challtestsrv's
/// `/clear-txt` clears every value of NAME, whatever VALUE says.
const HOOK: &str = r#"#!/bin/sh
# Publishes or withdraws a DNS-01 TXT record in pebble-challtestsrv.
# Usage: HOOK set|clear NAME VALUE   (NAME like _acme-challenge.app.burrow.test)
set -u
usage() { echo "dns hook: usage: $0 set|clear NAME VALUE ($*)" >&2; exit 2; }
[ $# -eq 3 ] || usage "$@"
case "$1" in set) path=set-txt ;; clear) path=clear-txt ;; *) usage "$@" ;; esac
name="${2%.}"
# Names and ACME values are DNS labels and base64url: nothing here needs JSON escaping.
case "$name$3" in *[!A-Za-z0-9._-]*) echo "dns hook: unexpected characters in $name $3" >&2; exit 2 ;; esac
body="{\"host\":\"$name.\",\"value\":\"$3\"}"
url="http://MANAGEMENT/$path"
if ! out="$(curl -sS --fail --noproxy '*' --max-time 10 --data "$body" "$url" 2>&1)"; then
    echo "dns hook: $1 $name at $url failed: $out" >&2
    exit 1
fi
"#;

pub(super) fn write_dns_hook(dir: &Path, management: SocketAddr) -> anyhow::Result<PathBuf> {
    let path = dir.join("dns-hook");
    write(&path, HOOK.replace("MANAGEMENT", &management.to_string()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

fn write(path: &Path, contents: impl AsRef<[u8]>) -> anyhow::Result<()> {
    std::fs::write(path, contents).with_context(|| format!("write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run_hook(hook: &Path, args: &[&str]) -> anyhow::Result<(bool, String)> {
        let out = tokio::process::Command::new(hook).args(args).kill_on_drop(true).output();
        let out = tokio::time::timeout(crate::STEP, out).await.context("the hook hung")??;
        Ok((out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned()))
    }

    #[tokio::test]
    async fn the_hook_fails_aloud_when_challtestsrv_does_not_answer() -> anyhow::Result<()> {
        if !crate::processes::installed("curl") {
            return Ok(());
        }
        let dir = tempfile::tempdir()?;
        let hook = write_dns_hook(dir.path(), crate::closed_port().await?)?;
        let (ok, stderr) = run_hook(&hook, &["set", "_acme-challenge.burrow.test", "abc"]).await?;
        assert!(!ok && stderr.contains("dns hook: set _acme-challenge.burrow.test at http://127.0.0.1:"), "{stderr}");
        Ok(())
    }

    #[tokio::test]
    async fn the_hook_refuses_what_it_cannot_quote() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let hook = write_dns_hook(dir.path(), crate::closed_port().await?)?;
        let (ok, stderr) = run_hook(&hook, &["set", "_acme-challenge.burrow.test", "a\"b"]).await?;
        assert!(!ok && stderr.contains("unexpected characters"), "{stderr}");
        let (ok, stderr) = run_hook(&hook, &["publish", "_acme-challenge.burrow.test", "abc"]).await?;
        assert!(!ok && stderr.contains("usage"), "{stderr}");
        Ok(())
    }
}
