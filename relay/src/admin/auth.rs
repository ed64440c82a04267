//! The admin token, accepted as `Authorization: Bearer TOKEN` (scripts, Prometheus) or as the
//! password of HTTP Basic authentication with any user name (a browser's login prompt).

use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Request, Response,
    header::{self, HeaderValue},
};
use subtle::ConstantTimeEq;

pub(super) fn allows<B>(request: &Request<B>, token: &str) -> bool {
    let presented = presented(request).unwrap_or_default();
    presented.len() == token.len() && bool::from(presented.as_bytes().ct_eq(token.as_bytes()))
}

/// Adds the challenges to a 401; Basic is what makes a browser ask for the password.
pub(super) fn challenge(mut denied: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    let headers = denied.headers_mut();
    headers.append(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"burrow relay\""));
    headers
        .append(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"burrow relay\", charset=\"UTF-8\""));
    denied
}

fn presented<B>(request: &Request<B>) -> Option<String> {
    let value = request.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, credentials) = value.split_once(' ')?;
    let credentials = credentials.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(credentials.to_string());
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(credentials).ok()?;
    let (_user, password) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    Some(password.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_authorization(value: &str) -> Request<()> {
        Request::builder().header(header::AUTHORIZATION, value).body(()).unwrap()
    }

    #[test]
    fn bearer_or_basic_password_with_any_user() {
        let token = "admin-token-0123456789";
        let basic = |text: &str| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(text));
        assert!(allows(&with_authorization("Bearer admin-token-0123456789"), token));
        assert!(allows(&with_authorization("bearer admin-token-0123456789"), token));
        assert!(allows(&with_authorization(&basic("anyone:admin-token-0123456789")), token));
        assert!(allows(&with_authorization(&basic(":admin-token-0123456789")), token));
        assert!(!allows(&with_authorization(&basic("admin-token-0123456789:")), token), "the token is the password");
        assert!(!allows(&with_authorization(&basic("anyone:admin-token-wrong")), token));
        assert!(!allows(&with_authorization("Bearer admin-token-012345678"), token));
        assert!(!allows(&with_authorization("Token admin-token-0123456789"), token));
        assert!(!allows(&Request::new(()), token));
    }
}
