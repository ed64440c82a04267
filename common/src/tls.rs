//! TLS for the QUIC session: certificates, fingerprint pinning, and quinn configs.
//!
//! Every rustls config is built with the ring provider explicitly, so no process-wide
//! provider has to be installed, and every config carries the burrow ALPN.

use std::{fmt, path::Path, str::FromStr, sync::Arc};

use rustls::{
    DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{
        CertificateDer, PrivateKeyDer, ServerName, UnixTime,
        pem::{self, PemObject},
    },
};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::protocol::ALPN;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// SHA-256 of a certificate's DER, written `sha256:<64 hex digits>`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    pub fn of(cert: &CertificateDer<'_>) -> Self {
        Self(sha256(cert.as_ref()))
    }

    fn matches(&self, cert: &CertificateDer<'_>) -> bool {
        Self::of(cert).0.ct_eq(&self.0).into()
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Fingerprint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad =
            || format!("invalid fingerprint {s:?}: expected sha256: followed by 64 hex digits, as the relay prints it");
        let trimmed = s.trim();
        let digits = trimmed
            .strip_prefix("sha256:")
            .or_else(|| trimmed.strip_prefix("SHA256:"))
            .unwrap_or(trimmed)
            .replace(':', "");
        let bytes = hex::decode(digits).map_err(|_| bad())?;
        Ok(Self(bytes.try_into().map_err(|_| bad())?))
    }
}

impl<'de> Deserialize<'de> for Fingerprint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for Fingerprint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A freshly generated self-signed certificate and its PKCS#8 key, both PEM.
pub struct SelfSigned {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Why a self-signed certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("generate key pair")]
    KeyPair(#[source] rcgen::Error),
    #[error("certificate names {0:?}")]
    Names(Vec<String>, #[source] rcgen::Error),
    #[error("self-sign certificate")]
    Sign(#[source] rcgen::Error),
}

/// Generates a P-256 certificate for `names`; names that parse as IPs become IP SANs.
pub fn self_signed(names: &[String]) -> Result<SelfSigned, GenerateError> {
    let key = rcgen::KeyPair::generate().map_err(GenerateError::KeyPair)?;
    let mut params =
        rcgen::CertificateParams::new(names.to_vec()).map_err(|e| GenerateError::Names(names.to_vec(), e))?;
    params.distinguished_name.push(rcgen::DnType::CommonName, "burrow relay");
    let cert = params.self_signed(&key).map_err(GenerateError::Sign)?;
    Ok(SelfSigned { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// Why a certificate chain or its key could not be read from PEM.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    #[error("parse certificate PEM")]
    Certificate(#[source] pem::Error),
    #[error("no certificate in PEM")]
    NoCertificate,
    #[error("no private key in PEM")]
    NoKey,
    #[error("parse private key PEM")]
    Key(#[source] pem::Error),
}

/// A certificate chain and its key, read from PEM.
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Identity {
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, PemError> {
        let chain =
            CertificateDer::pem_slice_iter(cert_pem).collect::<Result<Vec<_>, _>>().map_err(PemError::Certificate)?;
        if chain.is_empty() {
            return Err(PemError::NoCertificate);
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
            pem::Error::NoItemsFound => PemError::NoKey,
            e => PemError::Key(e),
        })?;
        Ok(Self { chain, key })
    }

    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.chain[0])
    }
}

/// Why a TLS or QUIC config could not be built from the given certificates.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("relay certificate and key do not match")]
    KeyMismatch(#[source] rustls::Error),
    /// Only a broken crypto provider gets here.
    #[error("no TLS 1.3 support")]
    Tls13(#[source] rustls::Error),
    #[error("no cipher suite usable for QUIC")]
    Quic(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    #[error(transparent)]
    CaFile(#[from] CaFileError),
}

/// Why the agent's `--ca` file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CaFileError {
    #[error("read CA file {}", path.display())]
    Read { path: std::path::PathBuf, source: pem::Error },
    #[error("parse CA file {}", path.display())]
    Parse { path: std::path::PathBuf, source: pem::Error },
    #[error("use a certificate of CA file {}", path.display())]
    Unusable { path: std::path::PathBuf, source: rustls::Error },
    #[error("CA file {} holds no certificate", .0.display())]
    Empty(std::path::PathBuf),
}

/// The relay's QUIC server config.
pub fn server_config(
    identity: Identity,
    transport: quinn::TransportConfig,
) -> Result<quinn::ServerConfig, ConfigError> {
    quic_server_config(&Arc::new(server_tls(identity)?), transport)
}

/// The relay's QUIC server config on the rustls config its TCP agent port uses too.
pub fn quic_server_config(
    tls: &Arc<rustls::ServerConfig>,
    transport: quinn::TransportConfig,
) -> Result<quinn::ServerConfig, ConfigError> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls.clone())?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// The rustls half of [`server_config`], with the burrow ALPN set.
pub fn server_tls(identity: Identity) -> Result<rustls::ServerConfig, ConfigError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(ConfigError::Tls13)?
        .with_no_client_auth()
        .with_single_cert(identity.chain, identity.key)
        .map_err(ConfigError::KeyMismatch)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    Ok(tls)
}

/// How the agent decides to trust the relay.
#[derive(Debug, Clone)]
pub enum Trust {
    /// The relay's certificate must have this SHA-256 fingerprint; names are not checked.
    Pinned(Fingerprint),
    /// The relay's certificate must chain to a CA in this PEM file and match the host name.
    CaFile(std::path::PathBuf),
    /// The relay's certificate must chain to a public root and match the host name.
    PublicRoots,
    /// Anything goes. For local experiments only.
    Insecure,
}

/// The agent's QUIC client config.
pub fn client_config(trust: &Trust, transport: quinn::TransportConfig) -> Result<quinn::ClientConfig, ConfigError> {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(client_tls(trust)?)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// The rustls half of [`client_config`], with the burrow ALPN set.
pub fn client_tls(trust: &Trust) -> Result<rustls::ClientConfig, ConfigError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(ConfigError::Tls13)?;
    let verifier = |pin| Arc::new(PinVerifier { pin, provider: provider() });
    let mut tls = match trust {
        Trust::Pinned(pin) => {
            builder.dangerous().with_custom_certificate_verifier(verifier(Some(*pin))).with_no_client_auth()
        }
        Trust::Insecure => builder.dangerous().with_custom_certificate_verifier(verifier(None)).with_no_client_auth(),
        Trust::CaFile(path) => builder.with_root_certificates(roots_from(path)?).with_no_client_auth(),
        Trust::PublicRoots => {
            let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    tls.alpn_protocols = vec![ALPN.to_vec()];
    Ok(tls)
}

fn roots_from(path: &Path) -> Result<rustls::RootCertStore, CaFileError> {
    let path_buf = || path.to_path_buf();
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path).map_err(|source| CaFileError::Read { path: path_buf(), source })?;
    for cert in certs {
        let cert = cert.map_err(|source| CaFileError::Parse { path: path_buf(), source })?;
        roots.add(cert).map_err(|source| CaFileError::Unusable { path: path_buf(), source })?;
    }
    if roots.is_empty() {
        return Err(CaFileError::Empty(path_buf()));
    }
    Ok(roots)
}

/// Accepts the relay by certificate fingerprint (or, with no pin, any certificate), while
/// still checking the handshake signature so the peer must hold the certificate's key.
#[derive(Debug)]
struct PinVerifier {
    pin: Option<Fingerprint>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.pin {
            Some(pin) if !pin.matches(end_entity) => {
                Err(rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure))
            }
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_parses_its_own_display_and_common_forms() {
        let cert = self_signed(&["relay.test".into()]).unwrap();
        let id = Identity::from_pem(cert.cert_pem.as_bytes(), cert.key_pem.as_bytes()).unwrap();
        let fp = id.fingerprint();
        assert_eq!(fp.to_string().parse::<Fingerprint>(), Ok(fp));
        let colons = hex::encode(fp.0)
            .as_bytes()
            .chunks(2)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(colons.to_uppercase().parse::<Fingerprint>(), Ok(fp));
        assert!("sha256:abcd".parse::<Fingerprint>().unwrap_err().contains("64 hex digits"));
    }
}
