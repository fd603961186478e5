//! Where and how to reach Redis: the one place a `redis::Client` is made.
//!
//! Every connection to Redis — the node's shared connection manager and
//! its reconnects, the inbox reader's dedicated blocking connection, and
//! `astramq-node user --redis` — comes from the client a [`RedisEndpoint`]
//! holds, so they all carry the same credentials and TLS settings:
//! redis-rs sends `AUTH` with the URL's user and password, and makes the
//! TLS handshake with the parameters built here, on every new connection.
//!
//! - `redis://[user]:password@host:port[/db]`: plain TCP. `redis://:pw@…`
//!   authenticates as the `default` user (`requirepass`), `redis://name:pw@…`
//!   as an ACL user. `@`, `:`, `/` and `%` in a password must be
//!   percent-encoded.
//! - `rediss://…`: TLS through rustls (ring). The server's certificate
//!   must chain to `--redis-ca` when given, otherwise to the system's
//!   roots, and must name the URL's host. `--redis-cert` with
//!   `--redis-key` presents a client certificate (Redis
//!   `tls-auth-clients yes`).
//!
//! Refused when the endpoint is built, before anything connects: a URL
//! that does not parse; TLS files with a URL that is not `rediss://`; a
//! certificate without its key or the reverse; a file that cannot be read
//! or holds no certificate (no key); and `#insecure` (skipping certificate
//! checks is not built). Not built either: re-reading the files (they are
//! read once, at start-up), Sentinel, Redis Cluster.
//!
//! No error or `Debug` output of this module shows the URL's password:
//! they show [`redact_url`]'s form of it.

use std::fmt;
use std::path::{Path, PathBuf};

use astramq_shared::log_text::redact_url;
use redis::{ClientTlsConfig, ConnectionAddr, TlsCertificates};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The PEM files of a `rediss://` connection; all optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisTlsFiles {
    /// CA certificates the server's certificate must chain to, instead of
    /// the system's roots (`--redis-ca`).
    pub ca: Option<PathBuf>,
    /// Client certificate chain, leaf first (`--redis-cert`).
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (`--redis-key`).
    pub key: Option<PathBuf>,
}

impl RedisTlsFiles {
    /// True when no file is given.
    pub fn is_empty(&self) -> bool {
        self.ca.is_none() && self.cert.is_none() && self.key.is_none()
    }
}

/// Why a Redis endpoint cannot be built. Each message names the setting
/// (flag, TOML key) at fault; URLs in it are redacted.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The URL does not parse as a Redis URL.
    #[error("redis: {url} is not a Redis URL: {source}")]
    Url {
        /// The URL, redacted.
        url: String,
        /// What redis-rs found wrong.
        source: redis::RedisError,
    },
    /// A TLS setting, or `#insecure`, with a URL that does not use TLS (or
    /// asks for what is not built).
    #[error("{setting}: {problem} (the URL is {url})")]
    Scheme {
        /// The setting at fault.
        setting: &'static str,
        /// What is wrong.
        problem: &'static str,
        /// The URL, redacted.
        url: String,
    },
    /// `--redis-cert` without `--redis-key`, or the reverse.
    #[error("{given}: needs {missing} too (a client certificate and its key go together)")]
    Unpaired {
        /// The one given.
        given: &'static str,
        /// The one missing.
        missing: &'static str,
    },
    /// A TLS file that cannot be used.
    #[error("{setting}: {path}: {problem}")]
    File {
        /// The setting naming the file.
        setting: &'static str,
        /// The file.
        path: String,
        /// What is wrong with it.
        problem: String,
    },
    /// redis-rs refused the TLS parameters (the files passed the checks
    /// here, so this is unexpected).
    #[error("redis: the TLS settings for {url} were refused: {source}")]
    Tls {
        /// The URL, redacted.
        url: String,
        /// What redis-rs said.
        source: redis::RedisError,
    },
}

/// A Redis server to connect to: its URL (credentials included) and the
/// client built from it and the TLS files. Cheap to clone.
#[derive(Clone)]
pub struct RedisEndpoint {
    /// The URL as given, password included: only ever shown redacted.
    url: String,
    /// True for `rediss://`.
    tls: bool,
    /// The client every connection is opened from.
    client: redis::Client,
}

impl RedisEndpoint {
    /// Checks `url` and `files` and builds the client (reading the files).
    pub fn open(url: &str, files: &RedisTlsFiles) -> Result<RedisEndpoint, EndpointError> {
        let redacted = redact_url(url);
        let plain = redis::Client::open(url).map_err(|source| EndpointError::Url {
            url: redacted.clone(),
            source,
        })?;
        let tls = match &plain.get_connection_info().addr {
            ConnectionAddr::TcpTls { insecure: true, .. } => return Err(EndpointError::Scheme {
                setting: "redis",
                problem:
                    "#insecure (no certificate checks) is not supported; give --redis-ca instead",
                url: redacted,
            }),
            ConnectionAddr::TcpTls { .. } => true,
            _ => false,
        };
        if !tls {
            if let Some(setting) = files_given(files).first() {
                return Err(EndpointError::Scheme {
                    setting,
                    problem: "needs a rediss:// URL",
                    url: redacted,
                });
            }
        }
        let client_tls = match (&files.cert, &files.key) {
            (Some(cert), Some(key)) => Some(ClientTlsConfig {
                client_cert: read_certificates("redis-cert", cert)?,
                client_key: read_private_key("redis-key", key)?,
            }),
            (Some(_), None) => {
                return Err(EndpointError::Unpaired {
                    given: "redis-cert",
                    missing: "redis-key",
                })
            }
            (None, Some(_)) => {
                return Err(EndpointError::Unpaired {
                    given: "redis-key",
                    missing: "redis-cert",
                })
            }
            (None, None) => None,
        };
        let root_cert = match &files.ca {
            Some(ca) => Some(read_certificates("redis-ca", ca)?),
            None => None,
        };
        if tls {
            // redis-rs builds its rustls configuration with the process'
            // default provider; make it ring whatever else is linked in.
            // An error means one is installed already, which is as good.
            let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
        }
        let client = if client_tls.is_none() && root_cert.is_none() {
            plain
        } else {
            redis::Client::build_with_tls(
                url,
                TlsCertificates {
                    client_tls,
                    root_cert,
                },
            )
            .map_err(|source| EndpointError::Tls {
                url: redacted,
                source,
            })?
        };
        Ok(RedisEndpoint {
            url: url.to_owned(),
            tls,
            client,
        })
    }

    /// The client to open connections with (a clone: clients are cheap).
    pub fn client(&self) -> redis::Client {
        self.client.clone()
    }

    /// The URL with its password hidden, for logs and messages.
    pub fn redacted(&self) -> String {
        redact_url(&self.url)
    }

    /// True for `rediss://`.
    pub fn is_tls(&self) -> bool {
        self.tls
    }
}

impl fmt::Debug for RedisEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisEndpoint")
            .field("url", &self.redacted())
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

/// The settings of the files given, in flag order.
fn files_given(files: &RedisTlsFiles) -> Vec<&'static str> {
    [
        ("redis-ca", files.ca.is_some()),
        ("redis-cert", files.cert.is_some()),
        ("redis-key", files.key.is_some()),
    ]
    .into_iter()
    .filter_map(|(setting, given)| given.then_some(setting))
    .collect()
}

fn file_error(setting: &'static str, path: &Path, problem: impl fmt::Display) -> EndpointError {
    EndpointError::File {
        setting,
        path: path.display().to_string(),
        problem: problem.to_string(),
    }
}

/// The PEM text of `path`, which must hold at least one certificate.
fn read_certificates(setting: &'static str, path: &Path) -> Result<Vec<u8>, EndpointError> {
    let pem = std::fs::read(path).map_err(|e| file_error(setting, path, e))?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(setting, path, format_args!("invalid PEM: {e}")))?;
    if certificates.is_empty() {
        return Err(file_error(setting, path, "no CERTIFICATE in it"));
    }
    Ok(pem)
}

/// The PEM text of `path`, which must hold a private key.
fn read_private_key(setting: &'static str, path: &Path) -> Result<Vec<u8>, EndpointError> {
    let pem = std::fs::read(path).map_err(|e| file_error(setting, path, e))?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        file_error(
            setting,
            path,
            format_args!("no PKCS#8, PKCS#1 or SEC1 private key: {e}"),
        )
    })?;
    Ok(pem)
}

/// What to tell an operator about a failure to connect that retrying will
/// not fix: credentials refused, or a TLS handshake that failed on
/// certificates or protocol (not on an unreachable server). `None` for
/// anything else.
pub fn permanent_failure(error: &redis::RedisError) -> Option<String> {
    if error.kind() == redis::ErrorKind::AuthenticationFailed {
        return Some(
            "Redis refused the user name or password in the URL (check the URL's user:password@ part)"
                .to_owned(),
        );
    }
    if let Some(code) = error.code() {
        if code == "NOAUTH" || code == "WRONGPASS" || code == "NOPERM" {
            return Some(format!(
                "Redis refused this client ({code}): give the user and password of an ACL user \
                 allowed these commands in the URL (redis://user:password@host:port)"
            ));
        }
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if let Some(tls) = io
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<tokio_rustls::rustls::Error>())
            {
                return Some(format!(
                    "TLS handshake with Redis failed: {tls} (check --redis-ca, \
                     the host name in the URL, and that the port speaks TLS)"
                ));
            }
        }
        source = cause.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(ca: Option<&str>, cert: Option<&str>, key: Option<&str>) -> RedisTlsFiles {
        RedisTlsFiles {
            ca: ca.map(PathBuf::from),
            cert: cert.map(PathBuf::from),
            key: key.map(PathBuf::from),
        }
    }

    #[test]
    fn plain_and_tls_urls_open_without_files() {
        let plain = RedisEndpoint::open("redis://u:pw@127.0.0.1:6379/", &RedisTlsFiles::default())
            .expect("a plain URL");
        assert!(!plain.is_tls());
        let tls = RedisEndpoint::open("rediss://127.0.0.1:6380", &RedisTlsFiles::default())
            .expect("a TLS URL");
        assert!(tls.is_tls());
    }

    #[test]
    fn tls_files_need_a_rediss_url() {
        let error = RedisEndpoint::open(
            "redis://:secret-pw@127.0.0.1:6379",
            &files(Some("/ca.pem"), None, None),
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.starts_with("redis-ca: needs a rediss:// URL"),
            "{error}"
        );
        assert!(!error.contains("secret-pw"), "{error}");
    }

    #[test]
    fn insecure_is_refused() {
        let error = RedisEndpoint::open(
            "rediss://127.0.0.1:6380/#insecure",
            &RedisTlsFiles::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("#insecure"), "{error}");
    }

    #[test]
    fn a_certificate_needs_its_key() {
        let error = RedisEndpoint::open(
            "rediss://127.0.0.1:6380",
            &files(None, Some("/cert.pem"), None),
        )
        .unwrap_err()
        .to_string();
        assert!(error.starts_with("redis-cert: needs redis-key"), "{error}");
    }

    #[test]
    fn missing_and_empty_files_are_named() {
        let missing = format!("/nonexistent-astramq-{}/ca.pem", std::process::id());
        let error = RedisEndpoint::open(
            "rediss://127.0.0.1:6380",
            &files(Some(&missing), None, None),
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.starts_with(&format!("redis-ca: {missing}: ")),
            "{error}"
        );
        let empty = std::env::temp_dir().join(format!("astramq-empty-ca-{}", std::process::id()));
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let error = RedisEndpoint::open(
            "rediss://127.0.0.1:6380",
            &files(empty.to_str(), None, None),
        )
        .unwrap_err()
        .to_string();
        std::fs::remove_file(&empty).unwrap();
        assert!(error.contains("no CERTIFICATE"), "{error}");
    }

    #[test]
    fn a_bad_url_is_refused_without_its_password() {
        let error = RedisEndpoint::open(
            "redis://:secret-pw@127.0.0.1:6379/notadb",
            &RedisTlsFiles::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(error.starts_with("redis: "), "{error}");
        assert!(!error.contains("secret-pw"), "{error}");
    }

    #[test]
    fn debug_output_hides_the_password() {
        let endpoint = RedisEndpoint::open(
            "redis://astra:secret-pw@127.0.0.1:6379",
            &RedisTlsFiles::default(),
        )
        .unwrap();
        let shown = format!("{endpoint:?}");
        assert!(shown.contains("astra:***@127.0.0.1"), "{shown}");
        assert!(!shown.contains("secret-pw"), "{shown}");
    }

    #[test]
    fn authentication_failures_are_permanent() {
        let error = redis::RedisError::from((
            redis::ErrorKind::AuthenticationFailed,
            "Password authentication failed",
        ));
        assert!(permanent_failure(&error).is_some());
        let refused =
            redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(permanent_failure(&refused).is_none());
        let handshake = redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            tokio_rustls::rustls::Error::InvalidCertificate(
                tokio_rustls::rustls::CertificateError::UnknownIssuer,
            ),
        ));
        let message = permanent_failure(&handshake).expect("a TLS failure is permanent");
        assert!(
            message.starts_with("TLS handshake with Redis failed"),
            "{message}"
        );
    }
}
