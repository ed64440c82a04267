//! Basic-auth credentials kept out of the command line, where every local user can read them
//! (`ps`, /proc): read from a file or the environment at load, and held to a minimum length.

use std::path::Path;

use anyhow::Context;
use burrow_common::{Secret, protocol::MIN_BASIC_AUTH_PASSWORD};

use super::TunnelConfig;

/// Where `--http` tunnels find `USER:PASSWORD` when neither `--basic-auth` nor
/// `--basic-auth-file` is given.
pub const BASIC_AUTH_ENV: &str = "BURROW_BASIC_AUTH";

impl TunnelConfig {
    /// Reads `basic_auth_file` into `basic_auth`; the file holds `USER:PASSWORD`, a trailing
    /// newline aside.
    pub fn read_basic_auth_file(&mut self) -> anyhow::Result<()> {
        let Some(path) = &self.basic_auth_file else { return Ok(()) };
        let name = self.name();
        anyhow::ensure!(
            self.basic_auth.is_none(),
            "invalid configuration: tunnel {name:?}: give basic_auth or basic_auth_file, not both"
        );
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("invalid configuration: tunnel {name:?}: basic_auth_file {}", path.display()))?;
        self.basic_auth = Some(Secret::new(text.trim_end_matches(['\r', '\n'])));
        Ok(())
    }

    /// `basic_auth_file`, when other local users may read it.
    pub fn exposed_basic_auth_file(&self) -> Option<&Path> {
        let path = self.basic_auth_file.as_deref()?;
        readable_by_others(path).then_some(path)
    }
}

/// Checks `USER:PASSWORD`, naming the tunnel and what is wrong.
pub(super) fn check_basic_auth(tunnel: &str, credentials: &Secret) -> anyhow::Result<()> {
    let Some((user, password)) = credentials.expose().split_once(':').filter(|(user, _)| !user.is_empty()) else {
        anyhow::bail!(
            "invalid configuration: tunnel {tunnel:?}: basic_auth: expected USER:PASSWORD, like alice:correct-horse"
        );
    };
    let length = password.chars().count();
    anyhow::ensure!(
        length >= MIN_BASIC_AUTH_PASSWORD,
        "invalid configuration: tunnel {tunnel:?}: basic_auth: the password of {user:?} is {length} characters long; \
         use at least {MIN_BASIC_AUTH_PASSWORD}"
    );
    Ok(())
}

#[cfg(unix)]
fn readable_by_others(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|meta| meta.permissions().mode() & 0o077 != 0)
}

#[cfg(not(unix))]
fn readable_by_others(_: &Path) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AgentConfig, Protocol};

    #[derive(serde::Serialize)]
    struct NoFlags {}

    fn load(text: &str, dir: &Path) -> anyhow::Result<AgentConfig> {
        let path = dir.join("agent.toml");
        std::fs::write(&path, text)?;
        AgentConfig::load(Some(&path), &NoFlags {})
    }

    #[test]
    fn a_short_password_is_refused_naming_the_minimum() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let text = "[[tunnels]]\nlocal = 80\nprotocol = \"http\"\nbasic_auth = \"alice:s3cret\"";
        let err = format!("{:#}", load(text, dir.path()).unwrap_err());
        assert!(err.contains("\"http-80\"") && err.contains("6 characters") && err.contains("at least 12"), "{err}");
        Ok(())
    }

    #[test]
    fn the_password_file_is_read_at_load_and_an_open_one_is_noticed() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let secret = dir.path().join("web.auth");
        std::fs::write(&secret, "alice:correct-horse-battery\n")?;
        let text = format!(
            "[[tunnels]]\nlocal = 80\nprotocol = \"http\"\nbasic_auth_file = {:?}",
            secret.display().to_string()
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644))?;
            let config = load(&text, dir.path())?;
            assert_eq!(config.tunnels[0].exposed_basic_auth_file(), Some(secret.as_path()));
            std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600))?;
        }
        let config = load(&text, dir.path())?;
        let tunnel = &config.tunnels[0];
        assert_eq!(tunnel.protocol, Protocol::Http);
        assert_eq!(tunnel.basic_auth.as_ref().map(Secret::expose), Some("alice:correct-horse-battery"));
        assert_eq!(tunnel.exposed_basic_auth_file(), None);

        std::fs::write(&secret, "alice:short\n")?;
        let err = format!("{:#}", load(&text, dir.path()).unwrap_err());
        assert!(err.contains("at least 12"), "a password from a file is held to the minimum too: {err}");
        Ok(())
    }
}
