//! The sweeps that end sessions from outside them: when their token is revoked, and when
//! this relay's lease in a fleet's store is lost.

use std::sync::Arc;

use burrow_common::CloseCode;
use tokio_util::sync::CancellationToken;

use crate::Shared;

/// `relay token revoke` may run as another process, and a fleet shares its tokens: when the
/// store reports a change, or a reload changes the configured token, sessions whose token is
/// no longer valid are closed.
pub(crate) async fn close_sessions_of_revoked_tokens(shared: Arc<Shared>, cancel: CancellationToken) {
    let mut store_changed = shared.store.token_changes();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            () = &mut store_changed => store_changed = shared.store.token_changes(),
            () = shared.token_reloaded.notified() => {}
        }
        let closed = shared.live.close_revoked(&shared).await;
        if closed > 0 {
            tracing::info!(closed, "closed the sessions of revoked tokens");
        }
    }
}

/// A relay whose lease in a fleet's store was lost can no longer prove that what it holds is
/// its own: it ends every session, and the agents reconnect and claim again under its new
/// lease (or through another relay).
pub(crate) async fn close_sessions_when_fenced(shared: Arc<Shared>, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            () = shared.store.lease_lost() => {}
        }
        let closed = shared.live.close_all(CloseCode::Fenced);
        tracing::warn!(closed, "this relay's lease in the store was lost; its sessions were closed to claim again");
    }
}
