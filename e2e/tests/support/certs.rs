//! Throwaway CAs and service certificates for the mesh's mutual TLS in tests.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType};

pub const ALL_SERVICES: [&str; 7] = ["gateway", "user", "friend", "file", "message", "transmit", "speech"];

pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// The three files a chatmesh process is pointed at.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl TlsFiles {
    pub fn flags(&self) -> Vec<String> {
        vec![
            format!("--tls-cert={}", self.cert.display()),
            format!("--tls-key={}", self.key.display()),
            format!("--tls-ca={}", self.ca.display()),
            // Tests replace certificates and wait for them to be picked up.
            "--tls-reload-interval=200ms".into(),
        ]
    }
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self { issuer }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate naming `services` (URI SANs) for `localhost` and 127.0.0.1: (cert, key) PEM.
    pub fn issue(&self, services: &[&str]) -> (String, String) {
        let mut params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, services.join("+"));
        for service in services {
            let uri = format!("spiffe://chatmesh.io/service/{service}");
            params.subject_alt_names.push(SanType::URI(uri.try_into().unwrap()));
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Writes a certificate for `services` and this CA's bundle under `dir` (`<name>.crt`, ...).
    pub fn write(&self, dir: &Path, name: &str, services: &[&str]) -> TlsFiles {
        let (cert, key) = self.issue(services);
        let files = TlsFiles {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
            ca: dir.join(format!("{name}-ca.crt")),
        };
        std::fs::write(&files.cert, cert).unwrap();
        std::fs::write(&files.key, key).unwrap();
        std::fs::write(&files.ca, self.pem()).unwrap();
        files
    }
}
