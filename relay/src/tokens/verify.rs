//! The one check of a token, for admission and for the sweep that closes the sessions of
//! revoked tokens: the token from the relay's config as it is now, then the store.

use subtle::ConstantTimeEq;

use super::{CONFIGURED_TOKEN_NAME, Grant, hash};
use crate::Shared;

/// The grant of the token whose SHA-256 is `digest`, if it is valid now. The configured
/// token is read from the config in force, so a reload that changes it revokes the old one.
pub(crate) async fn verify(shared: &Shared, digest: [u8; 32]) -> anyhow::Result<Option<Grant>> {
    if let Some(configured) = shared.config().token.as_ref().map(hash)
        && bool::from(digest.ct_eq(&configured))
    {
        return Ok(Some(Grant::unlimited(&digest, CONFIGURED_TOKEN_NAME)));
    }
    shared.store.verify_token(digest).await
}
