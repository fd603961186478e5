//! Certificates made during a test with `rcgen`: a CA, a server
//! certificate for `localhost` and `127.0.0.1`, and client certificates,
//! written as PEM files into a directory removed on drop.

use std::path::PathBuf;

use anyhow::Result;
use rcgen::{BasicConstraints, Certificate, CertificateParams, DnType, IsCa, KeyPair};

use astramq_tests::users::TempDir;

/// A CA and the certificates it signed, as files.
pub struct Pki {
    /// Holds the files; removed on drop.
    dir: TempDir,
    /// The CA's certificate, to sign client certificates.
    ca: Certificate,
    /// The CA's key.
    ca_key: KeyPair,
    /// Distinguishes this CA's files from another's in the same test.
    name: String,
}

/// A certificate and its key, as PEM files.
pub struct Identity {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM, PKCS#8).
    pub key: PathBuf,
}

impl Pki {
    /// A new CA named `name`; its certificate is at [`Pki::ca_file`].
    pub fn new(name: &str) -> Result<Pki> {
        let dir = TempDir::new(&format!("astramq-pki-{name}"))?;
        let ca_key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("AstraMQ test CA {name}"));
        let ca = params.self_signed(&ca_key)?;
        std::fs::write(dir.join(&format!("{name}-ca.pem")), ca.pem())?;
        Ok(Pki {
            dir,
            ca,
            ca_key,
            name: name.to_owned(),
        })
    }

    /// The CA certificate (PEM).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join(&format!("{}-ca.pem", self.name))
    }

    /// The CA certificate's PEM text.
    // Not every test file that includes this module reads it.
    #[allow(dead_code)]
    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// A server certificate for `localhost` and `127.0.0.1`.
    pub fn server(&self) -> Result<Identity> {
        let params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
        self.sign(params, "server")
    }

    /// A client certificate whose subject CN is `cn`.
    // Not every test file that includes this module signs client certificates.
    #[allow(dead_code)]
    pub fn client(&self, cn: &str) -> Result<Identity> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, cn);
        self.sign(params, &format!("client-{cn}"))
    }

    /// Signs `params` with the CA and writes `<stem>.pem` and `<stem>.key`.
    fn sign(&self, params: CertificateParams, stem: &str) -> Result<Identity> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.ca, &self.ca_key)?;
        let identity = Identity {
            cert: self.dir.join(&format!("{}-{stem}.pem", self.name)),
            key: self.dir.join(&format!("{}-{stem}.key", self.name)),
        };
        std::fs::write(&identity.cert, cert.pem())?;
        std::fs::write(&identity.key, key.serialize_pem())?;
        Ok(identity)
    }
}
