//! QUIC application error codes: why a session or a stream ended.
//!
//! Peers exchange only these numbers; each end turns them into the words below for its logs.

use quinn::VarInt;
use rustls::AlertDescription;

/// Why a session (QUIC connection) was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCode {
    /// The relay is shutting down or restarting; reconnect.
    Shutdown,
    /// The agent stopped; the relay frees its tunnels at once.
    AgentExit,
    /// The relay refused the Hello; the control stream says why.
    Refused,
    /// A peer sent a malformed, oversized or unexpected frame.
    ProtocolViolation,
    /// A newer session with the same token and tunnel name took over.
    Replaced,
    /// The agent did not complete its Hello in time.
    HandshakeTimeout,
    /// The operator revoked the session's token; retrying cannot help.
    Revoked,
    /// An update removed the session's last tunnel: an empty session would hold the relay's
    /// resources for nothing.
    NoTunnels,
    /// The relay lost its lease in the fleet's store, so it can no longer prove its claims;
    /// reconnect, and claim again.
    Fenced,
}

impl CloseCode {
    const ALL: [CloseCode; 9] = [
        CloseCode::Shutdown,
        CloseCode::AgentExit,
        CloseCode::Refused,
        CloseCode::ProtocolViolation,
        CloseCode::Replaced,
        CloseCode::HandshakeTimeout,
        CloseCode::Revoked,
        CloseCode::NoTunnels,
        CloseCode::Fenced,
    ];

    pub fn code(self) -> VarInt {
        VarInt::from_u32(match self {
            CloseCode::Shutdown => 1,
            CloseCode::AgentExit => 2,
            CloseCode::Refused => 3,
            CloseCode::ProtocolViolation => 4,
            CloseCode::Replaced => 5,
            CloseCode::HandshakeTimeout => 6,
            CloseCode::Revoked => 7,
            CloseCode::NoTunnels => 8,
            CloseCode::Fenced => 9,
        })
    }

    pub fn from_code(code: VarInt) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.code() == code)
    }

    pub fn describe(self) -> &'static str {
        match self {
            CloseCode::Shutdown => "relay shutting down",
            CloseCode::AgentExit => "agent stopped",
            CloseCode::Refused => "session refused",
            CloseCode::ProtocolViolation => "protocol violation",
            CloseCode::Replaced => "replaced by a newer agent session with the same token and tunnel",
            CloseCode::HandshakeTimeout => "handshake timed out",
            CloseCode::Revoked => "the relay's operator revoked this agent's token",
            CloseCode::NoTunnels => "the session's last tunnel was removed",
            CloseCode::Fenced => "the relay lost its lease in the fleet's store and must claim its tunnels again",
        }
    }
}

/// Why a stream was reset or stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamCode {
    /// The agent could not connect to its local target.
    LocalUnreachable,
    /// The stream header named a tunnel the agent does not have.
    UnknownTunnel,
    /// The stream header was malformed or did not arrive in time.
    BadHeader,
    /// The TCP connection on the other side failed or was reset.
    Aborted,
}

impl StreamCode {
    const ALL: [StreamCode; 4] =
        [StreamCode::LocalUnreachable, StreamCode::UnknownTunnel, StreamCode::BadHeader, StreamCode::Aborted];

    pub fn code(self) -> VarInt {
        VarInt::from_u32(match self {
            StreamCode::LocalUnreachable => 0x10,
            StreamCode::UnknownTunnel => 0x11,
            StreamCode::BadHeader => 0x12,
            StreamCode::Aborted => 0x13,
        })
    }

    pub fn from_code(code: VarInt) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.code() == code)
    }

    pub fn describe(self) -> &'static str {
        match self {
            StreamCode::LocalUnreachable => "local server unreachable",
            StreamCode::UnknownTunnel => "unknown tunnel",
            StreamCode::BadHeader => "bad stream header",
            StreamCode::Aborted => "connection aborted",
        }
    }
}

/// The TLS alerts rustls raises when it refuses a peer's certificate (RFC 8446, section 6.2),
/// `DecryptError` being a handshake signature the certificate's key did not make.
const CERTIFICATE_ALERTS: [AlertDescription; 9] = [
    AlertDescription::BadCertificate,
    AlertDescription::UnsupportedCertificate,
    AlertDescription::CertificateRevoked,
    AlertDescription::CertificateExpired,
    AlertDescription::CertificateUnknown,
    AlertDescription::UnknownCA,
    AlertDescription::AccessDenied,
    AlertDescription::DecryptError,
    AlertDescription::BadCertificateStatusResponse,
];

/// Whether this end refused the peer's certificate in the handshake (a pinned fingerprint or
/// CA it does not match), told by the TLS alert it raised, not by the error's words.
///
/// A TLS alert travels as QUIC transport error `0x100 + alert` (RFC 9001, section 4.8); a
/// [`quinn::ConnectionError::TransportError`] is one this end raised, while one the peer
/// sent arrives as `ConnectionClosed`.
pub fn refused_peer_certificate(err: &quinn::ConnectionError) -> bool {
    let quinn::ConnectionError::TransportError(error) = err else {
        return false;
    };
    CERTIFICATE_ALERTS.into_iter().any(|alert| error.code == quinn::TransportErrorCode::crypto(u8::from(alert)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_distinct() {
        for c in CloseCode::ALL {
            assert_eq!(CloseCode::from_code(c.code()), Some(c));
        }
        for c in StreamCode::ALL {
            assert_eq!(StreamCode::from_code(c.code()), Some(c));
        }
        assert_eq!(CloseCode::from_code(VarInt::from_u32(0)), None);
    }

    #[test]
    fn a_refused_certificate_is_told_by_its_alert() {
        let raised = |code: quinn::TransportErrorCode| quinn::ConnectionError::TransportError(code.into());
        let pin_mismatch = u8::from(AlertDescription::AccessDenied);
        assert!(refused_peer_certificate(&raised(quinn::TransportErrorCode::crypto(pin_mismatch))));
        let unknown_ca = u8::from(AlertDescription::UnknownCA);
        assert!(refused_peer_certificate(&raised(quinn::TransportErrorCode::crypto(unknown_ca))));
        let no_alpn = u8::from(AlertDescription::NoApplicationProtocol);
        assert!(!refused_peer_certificate(&raised(quinn::TransportErrorCode::crypto(no_alpn))));
        assert!(!refused_peer_certificate(&raised(quinn::TransportErrorCode::PROTOCOL_VIOLATION)));
        assert!(!refused_peer_certificate(&quinn::ConnectionError::TimedOut));
    }
}
