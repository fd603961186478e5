//! Loading, refusing and reloading TLS files made with rcgen.

use std::path::PathBuf;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

use super::*;

/// A scratch directory removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!("astramq-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A CA and a server certificate for localhost signed by it, as PEM:
/// (ca, server cert, server key, DER of a client certificate with CN `cn`).
fn pki(cn: &str) -> (String, String, String, Vec<u8>) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
    client
        .distinguished_name
        .push(DnType::OrganizationName, "AstraMQ");
    client.distinguished_name.push(DnType::CommonName, cn);
    let client_key = KeyPair::generate().unwrap();
    let client = client.signed_by(&client_key, &ca, &ca_key).unwrap();
    (
        ca.pem(),
        server.pem(),
        key.serialize_pem(),
        client.der().to_vec(),
    )
}

#[test]
fn the_common_name_is_read_from_a_certificate() {
    let (_, _, _, client) = pki("alice");
    assert_eq!(common_name(&client).as_deref(), Some("alice"));
}

#[test]
fn good_files_load_and_bad_ones_are_named() {
    let dir = Dir::new("load");
    let (ca, cert, key, _) = pki("alice");
    let files = TlsFiles {
        cert: dir.write("cert.pem", &cert),
        key: dir.write("key.pem", &key),
        client_ca: Some(dir.write("ca.pem", &ca)),
    };
    let tls = ServerTls::load(files.clone()).expect("valid files load");
    assert!(tls.requires_client_certificates());

    let missing = TlsFiles {
        cert: dir.0.join("nope.pem"),
        ..files.clone()
    };
    let error = ServerTls::load(missing).unwrap_err();
    assert_eq!(error.setting, "tls-cert");
    assert!(error.to_string().contains("nope.pem"), "{error}");

    let not_a_key = TlsFiles {
        key: dir.write("bad-key.pem", &cert),
        ..files.clone()
    };
    assert_eq!(ServerTls::load(not_a_key).unwrap_err().setting, "tls-key");

    let empty_ca = TlsFiles {
        client_ca: Some(dir.write("empty.pem", "")),
        ..files.clone()
    };
    assert_eq!(
        ServerTls::load(empty_ca).unwrap_err().setting,
        "tls-client-ca"
    );

    // A reload from broken files keeps the configuration in use.
    std::fs::write(&files.cert, "garbage").unwrap();
    assert_eq!(tls.reload().unwrap_err().setting, "tls-cert");
    std::fs::write(&files.cert, &cert).unwrap();
    tls.reload().expect("fixed files reload");
}
