//! Agent tokens: kept as SHA-256 hashes in `tokens.json`, compared in constant time.
//!
//! Tokens are 256-bit random values, so a plain hash is enough; a slow password hash would
//! only cost CPU on every handshake. The small file is read at every handshake, so
//! `relay token add` and `revoke` take effect on a running relay from the next session.
//! The token from the relay's config is not in the file: [`verify`] checks it first.

mod admin;
mod hostnames;
mod lock;
mod patterns;
mod verify;

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

/// Named only by the stores implementing it outside this module.
#[cfg(feature = "etcd")]
pub(crate) use self::admin::TokenAdmin;
pub(crate) use self::admin::open_admin;
pub use self::hostnames::{HostPattern, HostPatternError};
use self::lock::ChangeLock;
pub use self::patterns::{NONE, NamePattern, PatternError, describe_list, describe_patterns, parse_list};
pub(crate) use self::verify::verify;
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
    /// Ports this token may use; `None` means the relay's whole range, empty means none.
    pub ports: Option<Vec<PortRange>>,
    /// Subdomains this token may claim; `None` means any, empty means none.
    #[serde(default)]
    pub subdomains: Option<Vec<NamePattern>>,
    /// Custom hostnames this token may claim; empty (and absent from the file) means none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<HostPattern>,
    /// Unix seconds.
    pub created: u64,
}

impl TokenRecord {
    /// The record of a new token `token` named `name`: only its hash is kept.
    pub(crate) fn new(name: &str, token: &Secret, limits: Limits<'_>) -> Self {
        Self {
            name: name.into(),
            sha256: hex::encode(hash(token)),
            ports: limits.ports.map(<[_]>::to_vec),
            subdomains: limits.subdomains.map(<[_]>::to_vec),
            hostnames: limits.hostnames.to_vec(),
            created: now(),
        }
    }

    /// What this token grants; `None` if its stored hash is damaged.
    pub(crate) fn grant(&self) -> Option<Grant> {
        Some(Grant {
            id: self.id()?,
            name: self.name.clone(),
            ports: self.ports.clone(),
            subdomains: self.subdomains.clone(),
            hostnames: self.hostnames.clone(),
        })
    }

    /// The token's id (see [`Grant::id`]); `None` if its stored hash is damaged.
    pub(crate) fn id(&self) -> Option<String> {
        decode_hash(&self.sha256).map(|digest| token_id(&digest))
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    tokens: Vec<TokenRecord>,
}

/// What a valid token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Stable for the token's life and never reused by another token, unlike its name: what
    /// claims and reservations belong to.
    pub id: String,
    /// For people: logs, metrics, the admin API.
    pub name: String,
    pub ports: Option<Vec<PortRange>>,
    pub subdomains: Option<Vec<NamePattern>>,
    /// Custom hostnames: only those listed, none by default.
    pub hostnames: Vec<HostPattern>,
}

/// Which places a new token may use, per kind; `None` means no limit, empty means none.
#[derive(Debug, Default, Clone, Copy)]
pub struct Limits<'a> {
    pub ports: Option<&'a [PortRange]>,
    pub subdomains: Option<&'a [NamePattern]>,
    /// Custom hostnames, which no token may claim unless listed here.
    pub hostnames: &'a [HostPattern],
}

impl Grant {
    /// The grant of a token that may use every place the relay has.
    pub(crate) fn unlimited(digest: &[u8; 32], name: &str) -> Self {
        Self { id: token_id(digest), name: name.into(), ports: None, subdomains: None, hostnames: Vec::new() }
    }

    pub fn allows(&self, port: u16) -> bool {
        self.ports.as_ref().is_none_or(|ranges| ranges.iter().any(|r| r.contains(port)))
    }

    pub fn allows_subdomain(&self, name: &str) -> bool {
        self.subdomains.as_ref().is_none_or(|patterns| patterns.iter().any(|p| p.matches(name)))
    }

    /// Whether the token lists `host` (a valid lowercase hostname) among its custom hostnames.
    pub fn allows_hostname(&self, host: &str) -> bool {
        self.hostnames.iter().any(|p| p.matches(host))
    }

    pub fn describe_ports(&self, relay_range: PortRange) -> String {
        describe_ports(self.ports.as_deref(), relay_range)
    }

    pub fn describe_subdomains(&self) -> String {
        describe_patterns(self.subdomains.as_deref())
    }

    pub fn describe_hostnames(&self) -> String {
        describe_list(&self.hostnames)
    }
}

/// The relay's range for no limit, `none` for an empty list, else the ranges.
pub fn describe_ports(ports: Option<&[PortRange]>, relay_range: PortRange) -> String {
    match ports {
        None => relay_range.to_string(),
        Some([]) => NONE.into(),
        Some(ranges) => format_port_list(ranges),
    }
}

/// A token's id: the first 8 bytes of its SHA-256, in hex. 64 bits keep ids of different
/// tokens apart; the token itself cannot be learnt from them.
pub(crate) fn token_id(digest: &[u8; 32]) -> String {
    hex::encode(&digest[..8])
}

/// The tokens in `tokens.json`.
pub struct TokenStore {
    path: PathBuf,
}

impl TokenStore {
    pub fn open(data_dir: &Path) -> Self {
        Self { path: data_dir.join(TOKENS_FILE) }
    }

    /// The grant for `presented`, if the file holds it.
    pub fn verify(&self, presented: &Secret) -> anyhow::Result<Option<Grant>> {
        self.verify_digest(&hash(presented))
    }

    /// The grant for a token known by its hash: sessions keep only that, to be checked again
    /// when the token file changes.
    pub(crate) fn verify_digest(&self, digest: &[u8; 32]) -> anyhow::Result<Option<Grant>> {
        let mut found = None;
        for record in self.read()?.tokens {
            // Look at every record so the time taken does not depend on which one matched.
            let stored = decode_hash(&record.sha256).unwrap_or_default();
            if bool::from(digest.ct_eq(&stored)) {
                found = record.grant();
            }
        }
        Ok(found)
    }

    /// The SHA-256 of the file's bytes (`None` while it does not exist), to notice any
    /// change, whatever its modification time says.
    pub(crate) fn content_hash(&self) -> anyhow::Result<Option<[u8; 32]>> {
        Ok(files::read_optional(&self.path)?.map(|bytes| sha256(&bytes)))
    }

    fn read(&self) -> anyhow::Result<TokenFile> {
        match files::read_optional(&self.path)? {
            None => Ok(TokenFile::default()),
            Some(bytes) => serde_json::from_slice(&bytes).with_context(|| format!("parse {}", self.path.display())),
        }
    }

    /// Reads, changes and writes the file under its lock, so two changes made at once (by
    /// two `relay token` commands) both last.
    fn change<T>(&self, change: impl FnOnce(&mut TokenFile) -> anyhow::Result<Option<T>>) -> anyhow::Result<Option<T>> {
        let _locked = ChangeLock::acquire(&self.path)?;
        let mut file = self.read()?;
        let changed = change(&mut file)?;
        if changed.is_some() {
            files::write_private(&self.path, &serde_json::to_vec_pretty(&file)?)?;
        }
        Ok(changed)
    }

    /// Creates a token named `name` and returns it; only its hash is stored.
    pub fn add(&self, name: &str, limits: Limits<'_>) -> anyhow::Result<Secret> {
        validate_name(name)?;
        let added = self.change(|file| {
            if file.tokens.iter().any(|t| t.name == name) || name == CONFIGURED_TOKEN_NAME {
                anyhow::bail!("a token named {name:?} already exists (revoke it first)");
            }
            let token = generate();
            file.tokens.push(TokenRecord::new(name, &token, limits));
            Ok(Some(token))
        })?;
        added.context("an added token is always written")
    }

    pub fn list(&self) -> anyhow::Result<Vec<TokenRecord>> {
        Ok(self.read()?.tokens)
    }

    /// Removes the token `name`; returns whether it existed.
    pub fn revoke(&self, name: &str) -> anyhow::Result<bool> {
        let removed = self.change(|file| {
            let before = file.tokens.len();
            file.tokens.retain(|t| t.name != name);
            Ok((file.tokens.len() < before).then_some(()))
        })?;
        Ok(removed.is_some())
    }

    /// Whether the file holds no token.
    pub fn is_empty(&self) -> anyhow::Result<bool> {
        Ok(self.read()?.tokens.is_empty())
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

/// Checks a new token's name: a valid name, and not the configured token's.
pub(crate) fn validate_name(name: &str) -> anyhow::Result<()> {
    anyhow::ensure!(is_valid_name(name), "invalid token name {name:?}: expected {VALID_NAME}");
    anyhow::ensure!(
        name != CONFIGURED_TOKEN_NAME,
        "a token named {name:?} already exists (the relay's configured token)"
    );
    Ok(())
}

pub(crate) fn now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests;
