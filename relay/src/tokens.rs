//! Agent tokens: kept as SHA-256 hashes in `tokens.json`, compared in constant time.
//!
//! Tokens are 256-bit random values, so a plain hash is enough; a slow password hash would
//! only cost CPU on every handshake. The small file is read at every handshake, so
//! `relay token add` and `revoke` take effect on a running relay from the next session.

use std::{
    path::{Path, PathBuf},
    time::SystemTime,
};

use anyhow::Context;
use base64::Engine;
use burrow_common::{
    PortRange, Secret,
    config::format_port_list,
    protocol::{VALID_NAME, is_valid_name},
    tls::sha256,
};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::files;

pub(crate) const TOKENS_FILE: &str = "tokens.json";

/// Name under which the token from the relay's config (not the file) is known.
pub const CONFIGURED_TOKEN_NAME: &str = "configured";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRecord {
    pub name: String,
    /// Hex SHA-256 of the token.
    sha256: String,
    /// Ports this token may use; `None` means the relay's whole range.
    pub ports: Option<Vec<PortRange>>,
    /// Unix seconds.
    pub created: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    tokens: Vec<TokenRecord>,
}

/// What a valid token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub name: String,
    pub ports: Option<Vec<PortRange>>,
}

impl Grant {
    pub fn allows(&self, port: u16) -> bool {
        self.ports.as_ref().is_none_or(|ranges| ranges.iter().any(|r| r.contains(port)))
    }

    pub fn describe_ports(&self, relay_range: PortRange) -> String {
        match &self.ports {
            None => relay_range.to_string(),
            Some(ranges) => format_port_list(ranges),
        }
    }
}

pub struct TokenStore {
    path: PathBuf,
    configured: Option<[u8; 32]>,
}

impl TokenStore {
    pub fn open(data_dir: &Path, configured: Option<&Secret>) -> Self {
        Self { path: data_dir.join(TOKENS_FILE), configured: configured.map(hash) }
    }

    /// The grant for `presented`, if it is a known token.
    pub fn verify(&self, presented: &Secret) -> anyhow::Result<Option<Grant>> {
        self.verify_digest(&hash(presented))
    }

    /// The grant for a token known by its hash: sessions keep only that, to be checked again
    /// when the token file changes.
    pub(crate) fn verify_digest(&self, digest: &[u8; 32]) -> anyhow::Result<Option<Grant>> {
        let mut found = None;
        if let Some(configured) = &self.configured
            && bool::from(digest.ct_eq(configured))
        {
            found = Some(Grant { name: CONFIGURED_TOKEN_NAME.into(), ports: None });
        }
        for record in self.read()?.tokens {
            // Look at every record so the time taken does not depend on which one matched.
            let stored = decode_hash(&record.sha256).unwrap_or_default();
            if bool::from(digest.ct_eq(&stored)) {
                found = Some(Grant { name: record.name, ports: record.ports });
            }
        }
        Ok(found)
    }

    /// When the token file last changed, to notice `relay token revoke` from another process.
    pub(crate) fn modified(&self) -> Option<SystemTime> {
        std::fs::metadata(&self.path).and_then(|m| m.modified()).ok()
    }

    fn read(&self) -> anyhow::Result<TokenFile> {
        match files::read_optional(&self.path)? {
            None => Ok(TokenFile::default()),
            Some(bytes) => serde_json::from_slice(&bytes).with_context(|| format!("parse {}", self.path.display())),
        }
    }

    fn write(&self, file: &TokenFile) -> anyhow::Result<()> {
        Ok(files::write_private(&self.path, &serde_json::to_vec_pretty(file)?)?)
    }

    /// Creates a token named `name` and returns it; only its hash is stored.
    pub fn add(&self, name: &str, ports: Option<Vec<PortRange>>) -> anyhow::Result<Secret> {
        validate_name(name)?;
        let mut file = self.read()?;
        if file.tokens.iter().any(|t| t.name == name) || name == CONFIGURED_TOKEN_NAME {
            anyhow::bail!("a token named {name:?} already exists (revoke it first)");
        }
        let token = generate();
        file.tokens.push(TokenRecord { name: name.into(), sha256: hex::encode(hash(&token)), ports, created: now() });
        self.write(&file)?;
        Ok(token)
    }

    pub fn list(&self) -> anyhow::Result<Vec<TokenRecord>> {
        Ok(self.read()?.tokens)
    }

    /// Removes the token `name`; returns whether it existed.
    pub fn revoke(&self, name: &str) -> anyhow::Result<bool> {
        let mut file = self.read()?;
        let before = file.tokens.len();
        file.tokens.retain(|t| t.name != name);
        if file.tokens.len() == before {
            return Ok(false);
        }
        self.write(&file)?;
        Ok(true)
    }

    /// Whether any token at all would be accepted.
    pub fn is_empty(&self) -> anyhow::Result<bool> {
        Ok(self.configured.is_none() && self.read()?.tokens.is_empty())
    }
}

/// A new random token: `brw_` and 43 URL-safe characters (256 bits).
pub fn generate() -> Secret {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    Secret::new(format!("brw_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)))
}

pub(crate) fn hash(token: &Secret) -> [u8; 32] {
    sha256(token.expose().as_bytes())
}

fn decode_hash(text: &str) -> Option<[u8; 32]> {
    hex::decode(text).ok()?.try_into().ok()
}

fn validate_name(name: &str) -> anyhow::Result<()> {
    anyhow::ensure!(is_valid_name(name), "invalid token name {name:?}: expected {VALID_NAME}");
    Ok(())
}

pub(crate) fn now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_verify_revoke() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = TokenStore::open(dir.path(), None);
        assert!(store.is_empty()?);
        let ports = Some(vec!["8000-8100".parse().map_err(anyhow::Error::msg)?]);
        let alice = store.add("alice", ports.clone())?;
        assert!(store.add("alice", None).is_err());
        let grant = store.verify(&alice)?.expect("alice's token is valid");
        assert_eq!(grant, Grant { name: "alice".into(), ports });
        assert!(grant.allows(8050) && !grant.allows(20000));
        assert_eq!(store.verify(&Secret::new("brw_wrong"))?, None);

        let text = std::fs::read_to_string(dir.path().join(TOKENS_FILE))?;
        assert!(!text.contains(alice.expose()), "the file must hold only hashes");

        // A second handle sees the revocation, as a running relay sees `relay token revoke`.
        let other = TokenStore::open(dir.path(), None);
        assert!(other.revoke("alice")?);
        assert_eq!(store.verify(&alice)?, None);
        Ok(())
    }

    #[test]
    fn configured_token_is_accepted() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = TokenStore::open(dir.path(), Some(&Secret::new("s3cret")));
        assert_eq!(store.verify(&Secret::new("s3cret"))?.map(|g| g.name), Some(CONFIGURED_TOKEN_NAME.into()));
        Ok(())
    }
}
