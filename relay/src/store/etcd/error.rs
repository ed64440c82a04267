//! Why a call to etcd failed, classified by the client's error variant and gRPC code (never
//! by message text), so the relay can tell "try again later" from "refused".

use std::{future::Future, time::Duration};

use etcd_client::Error;
use tonic::Code;

#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    #[error("etcd is unreachable")]
    Unavailable(#[source] Error),
    #[error("etcd did not answer within {0:?}")]
    Timeout(Duration),
    /// This relay's lease expired: what it held is no longer its own.
    #[error("this relay's lease in etcd has expired")]
    LeaseLost,
    #[error("damaged record at {key}")]
    Corrupt {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("etcd refused the request")]
    Etcd(#[source] Error),
    #[error(transparent)]
    ServedElsewhere(#[from] crate::store::ServedElsewhere),
}

/// Which kind of call failed: only a call that writes under this relay's lease reads
/// `NotFound` as that lease being gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Call {
    Plain,
    UnderLease,
}

pub(crate) fn classify(e: Error, call: Call) -> StoreError {
    match &e {
        Error::TransportError(_) | Error::IoError(_) => StoreError::Unavailable(e),
        Error::GRpcStatus(status) => match status.code() {
            // tonic reports a balancer with no ready endpoint as Unknown.
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Aborted | Code::Unknown => {
                StoreError::Unavailable(e)
            }
            Code::NotFound if call == Call::UnderLease => StoreError::LeaseLost,
            _ => StoreError::Etcd(e),
        },
        Error::LeaseKeepAliveError(_) if call == Call::UnderLease => StoreError::LeaseLost,
        _ => StoreError::Etcd(e),
    }
}

/// Runs one call to etcd within `limit`. The client's own timeout starts only once an
/// endpoint is ready; with every endpoint down it would wait for ever.
pub(crate) async fn within<T>(
    limit: Duration,
    call: Call,
    request: impl Future<Output = Result<T, Error>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(limit, request).await {
        Ok(answer) => answer.map_err(|e| classify(e, call)),
        Err(_) => Err(StoreError::Timeout(limit)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified_by_code_and_call() {
        let status = |code| Error::GRpcStatus(tonic::Status::new(code, "x"));
        assert!(matches!(classify(status(Code::Unavailable), Call::Plain), StoreError::Unavailable(_)));
        assert!(matches!(classify(status(Code::Unknown), Call::Plain), StoreError::Unavailable(_)));
        assert!(matches!(classify(status(Code::NotFound), Call::UnderLease), StoreError::LeaseLost));
        assert!(matches!(classify(status(Code::NotFound), Call::Plain), StoreError::Etcd(_)));
        assert!(matches!(classify(status(Code::PermissionDenied), Call::Plain), StoreError::Etcd(_)));
    }
}
