//! Live agent sessions by token, so revoking a token ends its sessions at once rather than
//! at their next reconnect.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use burrow_common::CloseCode;

use crate::{registry::SessionId, tokens::TokenStore};

#[derive(Default)]
pub(crate) struct LiveSessions {
    by_id: Mutex<HashMap<SessionId, Live>>,
}

struct Live {
    /// The SHA-256 of the session's token: enough to check it again, useless to a thief.
    token: [u8; 32],
    conn: quinn::Connection,
}

/// A session's entry; dropping it removes the entry.
pub(crate) struct Registered {
    id: SessionId,
    sessions: Arc<LiveSessions>,
}

impl LiveSessions {
    pub(crate) fn register(self: &Arc<Self>, id: SessionId, token: [u8; 32], conn: quinn::Connection) -> Registered {
        if let Ok(mut by_id) = self.by_id.lock() {
            by_id.insert(id, Live { token, conn });
        }
        Registered { id, sessions: self.clone() }
    }

    /// Closes every session whose token the store no longer accepts; returns how many.
    /// An unreadable store closes nothing: a bad edit must not cut off every agent.
    pub(crate) fn close_revoked(&self, tokens: &TokenStore) -> usize {
        let Ok(by_id) = self.by_id.lock() else {
            return 0;
        };
        let mut closed = 0;
        for live in by_id.values() {
            match tokens.verify_digest(&live.token) {
                Ok(Some(_)) => {}
                Ok(None) => {
                    CloseCode::Revoked.close(&live.conn);
                    closed += 1;
                }
                Err(e) => {
                    tracing::warn!("token store unreadable; sessions kept: {e:#}");
                    return closed;
                }
            }
        }
        closed
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        if let Ok(mut by_id) = self.sessions.by_id.lock() {
            by_id.remove(&self.id);
        }
    }
}
