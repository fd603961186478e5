//! TLS for client listeners, shared by the node and the proxy.
//!
//! A [`ServerTls`] holds the rustls server configuration built from three
//! PEM files: the certificate chain (`--tls-cert`), its private key
//! (`--tls-key`) and, optionally, the CA that client certificates must be
//! signed by (`--tls-client-ca`). With a client CA every client must
//! present a certificate that CA signed, or the handshake fails; the
//! certificate's subject CN ([`client_common_name`]) is then the client's
//! identity.
//!
//! Loading refuses a missing, unreadable or invalid file with an error
//! naming the setting and the file ([`TlsFileError`]), which start-up
//! turns into exit code 2. [`ServerTls::reload`] re-reads the files (on
//! SIGHUP): new handshakes use the new configuration, handshakes already
//! done keep theirs, and bad files leave the old configuration in place.
//!
//! The crypto provider is rustls' `ring`: nothing here needs OpenSSL,
//! cmake or a C toolchain beyond what `ring` builds itself.

mod der;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::rustls::crypto::ring::default_provider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

pub use der::common_name;

/// The PEM files a TLS listener is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain, leaf first (`--tls-cert`).
    pub cert: PathBuf,
    /// The leaf's private key: PKCS#8, PKCS#1 or SEC1 (`--tls-key`).
    pub key: PathBuf,
    /// CA certificates that sign client certificates; when set, clients
    /// must present one (`--tls-client-ca`).
    pub client_ca: Option<PathBuf>,
}

/// A TLS file that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{setting}: {path}: {problem}")]
pub struct TlsFileError {
    /// The flag (TOML key) that names the file, without `--`.
    pub setting: &'static str,
    /// The file.
    pub path: String,
    /// What is wrong with it.
    pub problem: String,
}

impl TlsFileError {
    fn new(setting: &'static str, path: &Path, problem: impl ToString) -> TlsFileError {
        TlsFileError {
            setting,
            path: path.display().to_string(),
            problem: problem.to_string(),
        }
    }
}

/// Why a TLS handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// Not TLS, a certificate refused, or the socket failed.
    #[error("TLS handshake failed: {0}")]
    Failed(#[from] std::io::Error),
    /// The client did not finish the handshake in time.
    #[error("TLS handshake timed out")]
    TimedOut,
}

/// A listener's TLS configuration, replaceable while it serves.
pub struct ServerTls {
    /// Where the configuration is (re-)read from.
    files: TlsFiles,
    /// The configuration new handshakes use; swapped whole by `reload`.
    current: ArcSwap<ServerConfig>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads and checks the files.
    pub fn load(files: TlsFiles) -> Result<ServerTls, TlsFileError> {
        let config = build(&files)?;
        Ok(ServerTls {
            files,
            current: ArcSwap::from(config),
        })
    }

    /// The files this configuration comes from.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Whether clients must present a certificate signed by the client CA.
    pub fn requires_client_certificates(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// Re-reads the files; on an error the configuration in use stays.
    pub fn reload(&self) -> Result<(), TlsFileError> {
        self.current.store(build(&self.files)?);
        Ok(())
    }

    /// Runs the server side of a handshake on `stream` (a TCP socket, or
    /// the proxy's accepted stream), within `timeout`.
    pub async fn accept<S>(
        &self,
        stream: S,
        timeout: Duration,
    ) -> Result<TlsStream<S>, HandshakeError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let acceptor = TlsAcceptor::from(self.current.load_full());
        match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(HandshakeError::TimedOut),
        }
    }
}

/// The subject CN of the certificate a client presented in `stream`'s
/// handshake (verified against the client CA), if it has one.
pub fn client_common_name(stream: &TlsStream<TcpStream>) -> Option<String> {
    let certificates = stream.get_ref().1.peer_certificates()?;
    common_name(certificates.first()?.as_ref())
}

/// The rustls configuration for `files`.
fn build(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsFileError> {
    let provider = Arc::new(default_provider());
    let chain = certificates("tls-cert", &files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|error| TlsFileError::new("tls-key", &files.key, pem_problem(error)))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|error| TlsFileError::new("tls-cert", &files.cert, error))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for certificate in certificates("tls-client-ca", path)? {
                roots
                    .add(certificate)
                    .map_err(|error| TlsFileError::new("tls-client-ca", path, error))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|error| TlsFileError::new("tls-client-ca", path, error))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder.with_single_cert(chain, key).map_err(|error| {
        TlsFileError::new(
            "tls-key",
            &files.key,
            format!(
                "does not fit the certificate in {}: {error}",
                files.cert.display()
            ),
        )
    })?;
    Ok(Arc::new(config))
}

/// Every certificate in a PEM file; none at all is an error.
fn certificates(
    setting: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let chain = CertificateDer::pem_file_iter(path)
        .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
        .map_err(|error| TlsFileError::new(setting, path, pem_problem(error)))?;
    if chain.is_empty() {
        return Err(TlsFileError::new(
            setting,
            path,
            "no PEM certificate (BEGIN CERTIFICATE) in the file",
        ));
    }
    Ok(chain)
}

/// A PEM error in words an operator can act on.
fn pem_problem(error: tokio_rustls::rustls::pki_types::pem::Error) -> String {
    use tokio_rustls::rustls::pki_types::pem::Error;
    match error {
        Error::Io(error) => error.to_string(),
        Error::NoItemsFound => "no PEM item of the expected kind in the file".to_owned(),
        other => format!("not valid PEM: {other}"),
    }
}

#[cfg(test)]
mod tests;
