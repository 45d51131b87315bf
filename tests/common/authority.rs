//! A throwaway certificate authority for the TLS tests (rcgen).

use std::path::Path;
use std::sync::Arc;

use futures_rustls::rustls::{self, ClientConfig, RootCertStore};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType, SerialNumber};

/// A CA, and leaf certificates for 127.0.0.1 signed by it.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    root: rustls::pki_types::CertificateDer<'static>,
}

impl Authority {
    pub fn new() -> Authority {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let root = params.self_signed(&key).unwrap().der().clone();
        Authority {
            issuer: Issuer::new(params, key),
            root,
        }
    }

    /// Writes a leaf certificate with `serial` and its key as PEM files; returns the DER.
    pub fn leaf(&self, serial: u64, cert: &Path, key: &Path) -> Vec<u8> {
        let leaf_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        params.serial_number = Some(SerialNumber::from(serial));
        let leaf = params.signed_by(&leaf_key, &self.issuer).unwrap();
        // Written beside and renamed into place, as a deploy does.
        std::fs::write(cert.with_extension("new"), leaf.pem()).unwrap();
        std::fs::rename(cert.with_extension("new"), cert).unwrap();
        std::fs::write(key.with_extension("new"), leaf_key.serialize_pem()).unwrap();
        std::fs::rename(key.with_extension("new"), key).unwrap();
        leaf.der().to_vec()
    }

    /// A client that trusts this CA, offering `alpn`.
    pub fn client_offering(&self, alpn: &[&[u8]]) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.root.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// A client that trusts this CA, offering `http/1.1`.
    pub fn client(&self) -> Arc<ClientConfig> {
        self.client_offering(&[b"http/1.1"])
    }
}
