//! When to renew, as the CA suggests it (ACME Renewal Information, RFC 9773): a CA that is
//! revoking certificates early can ask for renewal sooner than two thirds into their life.

use std::time::{Duration, SystemTime};

use instant_acme::{Account, CertificateIdentifier};

use super::stored::Issued;

/// A random time in the CA's suggested window, if it suggests one; `None` leaves the default.
pub(crate) async fn suggested(account: &Account, issued: &Issued) -> Option<SystemTime> {
    let id = CertificateIdentifier::try_from(issued.leaf()).ok()?;
    let (info, _) = account.renewal_info(&id).await.ok()?;
    let window = info.suggested_window;
    let at = |secs: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
    let start = u64::try_from(window.start.unix_timestamp()).unwrap_or(0);
    let end = u64::try_from(window.end.unix_timestamp()).unwrap_or(0);
    let spread = end.saturating_sub(start);
    let chosen = start + if spread == 0 { 0 } else { rand::random_range(0..spread) };
    // Never later than the default: the window is a request to renew sooner, not later.
    Some(at(chosen).min(issued.renew_at()))
}
