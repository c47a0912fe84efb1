//! TLS certificates: listener certificates loaded (and checked) with every configuration
//! generation and chosen per handshake from the current one, so a renewed certificate
//! applies on reload (SIGHUP or a change to its files) without a restart; and the CA
//! certificates an upstream's certificate is verified against.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use pingora::protocols::tls::CaType;
use pingora::utils::tls::{WrappedX509, parse_x509};

use crate::snapshot::Snapshot;

/// Why certificate files could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsFileError {
    #[error("cannot read {0}: {1}")]
    Read(String, std::io::Error),
    #[error("{0} holds no PEM certificate")]
    NoCertificate(String),
    #[error("{0} holds no PEM private key: {1}")]
    NoKey(String, String),
    #[error("the private key is of a kind TLS cannot use: {0}")]
    UnsupportedKey(String),
    #[error("the private key does not match the certificate")]
    Mismatch,
    #[error("{0}: not a CA certificate: {1}")]
    BadCa(String, String),
}

fn read(path: &Path) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|e| TlsFileError::Read(path.display().to_string(), e))
}

/// The PEM certificates of a file's bytes, in order.
fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsFileError::NoCertificate(path.display().to_string()));
    }
    Ok(certs)
}

/// A TLS listener's certificate and key, and the files as read (their content goes into the
/// configuration's content hash, so a renewed pair makes a new generation).
#[derive(Debug)]
pub struct ListenerFiles {
    pub certified: Arc<CertifiedKey>,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

/// A listener's certificate chain and key, checked to belong together.
pub fn load_listener(cert: &Path, key: &Path) -> Result<ListenerFiles, TlsFileError> {
    let cert_pem = read(cert)?;
    let chain = certificates(cert, &cert_pem)?;
    let key_pem = read(key)?;
    let der = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| TlsFileError::NoKey(key.display().to_string(), e.to_string()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&der)
        .map_err(|e| TlsFileError::UnsupportedKey(e.to_string()))?;
    let certified = CertifiedKey::new(chain, signing);
    if certified.keys_match().is_err() {
        return Err(TlsFileError::Mismatch);
    }
    Ok(ListenerFiles {
        certified: Arc::new(certified),
        cert_pem,
        key_pem,
    })
}

/// The CA certificates of a PEM file, as Pingora's upstream connector takes them, and the
/// file as read. Each must parse as a trust anchor (checked here: Pingora's own parsing
/// assumes it does).
pub fn load_ca(path: &Path) -> Result<(Arc<CaType>, Vec<u8>), TlsFileError> {
    let pem = read(path)?;
    let certs = certificates(path, &pem)?;
    let mut check = rustls::RootCertStore::empty();
    let mut wrapped = Vec::with_capacity(certs.len());
    for c in certs {
        check
            .add(c.clone())
            .map_err(|e| TlsFileError::BadCa(path.display().to_string(), e.to_string()))?;
        wrapped.push(WrappedX509::new(c.to_vec(), parse_x509));
    }
    Ok((Arc::from(wrapped.into_boxed_slice()), pem))
}

/// The certificate of TLS listener `index`, taken from the current configuration at each
/// handshake.
#[derive(Debug)]
pub struct CurrentCert {
    pub config: Arc<ArcSwap<Snapshot>>,
    pub index: usize,
}

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.config.load().tls_keys.get(self.index).cloned()
    }
}
