//! What a visitor's guesses cost: a wrong password or a probed hostname takes a unit of the
//! address's guessing quota (shared with agents' tokens), and an address over it is answered
//! 429 before any lookup or compare, so neither parallel requests nor a correct guess go
//! faster than the quota allows.

use hyper::{Request, body::Incoming, header};

use super::{RelayAnswer, VisitorConnection};
use crate::{
    claims::{Route, RouteKind},
    metrics::CHECKED_BASIC_AUTH,
    vhost::pages,
};

impl VisitorConnection {
    /// Refuses an address over its guessing quota before its request is looked at: answering
    /// known names while refusing unknown ones would tell a prober which names exist.
    pub(super) fn refuse_when_guessing(&self) -> Result<(), RelayAnswer> {
        if self.shared.limiter.throttled(self.visitor.addr.ip()) {
            return Err(RelayAnswer::TooManyGuesses);
        }
        Ok(())
    }

    /// A name no agent holds costs a unit, as a wrong password does, so names cannot be
    /// probed faster than passwords can be guessed.
    pub(super) async fn unknown_name(&self, host: &str) -> RelayAnswer {
        match self.shared.limiter.attempt(self.visitor.addr.ip()) {
            Ok(attempt) => {
                attempt.failed().await;
                pages::not_found(host).into()
            }
            Err(_) => RelayAnswer::TooManyGuesses,
        }
    }

    /// Whether the visitor may reach the HTTP tunnel `route`; `Ok(true)` when the request's
    /// credentials were the relay's to check and are to be dropped.
    pub(super) async fn check_access(
        &self,
        request: &Request<Incoming>,
        route: &Route,
        host: &str,
    ) -> Result<bool, RelayAnswer> {
        let RouteKind::Http(access) = &route.kind else {
            return Err(pages::bad_request(&format!("{host} is a TLS tunnel: reach it over HTTPS")).into());
        };
        let ip = self.visitor.addr.ip();
        if access.check_address(ip).is_err() {
            return Err(pages::forbidden_ip(ip).into());
        }
        if !access.requires_credentials() {
            return Ok(false);
        }
        // A browser's first, bare request only learns that it must sign in: nothing to check.
        if !request.headers().contains_key(header::AUTHORIZATION) {
            return Err(RelayAnswer::Unauthorized(host.to_string()));
        }
        let attempt = self.shared.limiter.attempt(ip).map_err(|_| RelayAnswer::TooManyGuesses)?;
        self.shared.metrics.guessing.credential_checks.get_or_create(&CHECKED_BASIC_AUTH).inc();
        match access.check_credentials(request.headers()) {
            Ok(()) => {
                attempt.succeeded();
                Ok(true)
            }
            Err(_) => {
                attempt.failed().await;
                Err(RelayAnswer::Unauthorized(host.to_string()))
            }
        }
    }
}
