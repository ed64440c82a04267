//! Connection IDs the relay hands out: long enough never to collide, signed so a restarted
//! relay recognises its predecessor's and answers them with a stateless reset.
//!
//! quinn's own signed generator draws 3 random bytes per ID. Under a handshake flood the
//! relay hands out thousands of IDs, including the ones it puts in Retry packets, which it
//! does not record: a new connection's ID could equal a client's Retry ID, and that client's
//! next Initial then went to the wrong connection and was dropped (about one handshake flood
//! in ten stalled a client). Eight random bytes make that practically impossible.

use std::time::Duration;

use quinn_proto::{ConnectionId, ConnectionIdGenerator, InvalidCid};
use rand::RngCore;
use ring::hmac;

const NONCE_LEN: usize = 8;
const SIGNATURE_LEN: usize = 8;

pub(crate) struct SignedConnectionIds {
    key: hmac::Key,
}

impl SignedConnectionIds {
    /// `secret` is persisted in the data directory, so IDs survive a restart.
    pub(crate) fn new(secret: u64) -> Self {
        Self { key: hmac::Key::new(hmac::HMAC_SHA256, &secret.to_le_bytes()) }
    }

    fn signature(&self, nonce: &[u8]) -> [u8; SIGNATURE_LEN] {
        let tag = hmac::sign(&self.key, nonce);
        let mut signature = [0u8; SIGNATURE_LEN];
        signature.copy_from_slice(&tag.as_ref()[..SIGNATURE_LEN]);
        signature
    }
}

impl ConnectionIdGenerator for SignedConnectionIds {
    fn generate_cid(&mut self) -> ConnectionId {
        let mut bytes = [0u8; NONCE_LEN + SIGNATURE_LEN];
        rand::rng().fill_bytes(&mut bytes[..NONCE_LEN]);
        let signature = self.signature(&bytes[..NONCE_LEN]);
        bytes[NONCE_LEN..].copy_from_slice(&signature);
        ConnectionId::new(&bytes)
    }

    fn validate(&self, cid: &ConnectionId) -> Result<(), InvalidCid> {
        if cid.len() != NONCE_LEN + SIGNATURE_LEN {
            return Err(InvalidCid);
        }
        let (nonce, signature) = cid.split_at(NONCE_LEN);
        if self.signature(nonce) == signature { Ok(()) } else { Err(InvalidCid) }
    }

    fn cid_len(&self) -> usize {
        NONCE_LEN + SIGNATURE_LEN
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_validate_under_the_same_secret_only_and_differ() {
        let mut generator = SignedConnectionIds::new(7);
        let first = generator.generate_cid();
        let second = generator.generate_cid();
        assert_ne!(first, second);
        assert!(SignedConnectionIds::new(7).validate(&first).is_ok(), "a restarted relay must recognise it");
        assert!(SignedConnectionIds::new(8).validate(&first).is_err());
        assert!(generator.validate(&ConnectionId::new(&[0; 16])).is_err());
        assert!(generator.validate(&ConnectionId::new(&first[..8])).is_err());
    }
}
