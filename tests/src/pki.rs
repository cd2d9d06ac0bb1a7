//! A throwaway certificate authority for tests of TLS: a CA, server certificates for loopback and
//! client certificates by common name, written as PEM files into a temporary directory that is
//! removed when the guard drops. Made with `rcgen`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::error::{LabError, Result};

/// A CA and the files it signed, under one temporary directory.
pub struct TestPki {
    dir: tempfile::TempDir,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its private key, as PEM files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn pki_error(what: &str, e: rcgen::Error) -> LabError {
    LabError::Pki(format!("{what}: {e}"))
}

impl TestPki {
    /// A new CA named `name`; its certificate is [`TestPki::ca_file`].
    pub fn new(name: &str) -> Result<TestPki> {
        let dir = tempfile::Builder::new()
            .prefix("weft-pki-")
            .tempdir()
            .map_err(LabError::io(std::env::temp_dir()))?;
        let mut params = CertificateParams::new(Vec::<String>::new())
            .map_err(|e| pki_error("CA parameters", e))?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().map_err(|e| pki_error("CA key", e))?;
        let cert = params
            .self_signed(&key)
            .map_err(|e| pki_error("CA certificate", e))?;
        let pki = TestPki {
            issuer: Issuer::new(params, key),
            dir,
        };
        write(&pki.ca_file(), &cert.pem())?;
        Ok(pki)
    }

    /// The CA certificate (PEM).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A server certificate for `ip` (and `localhost`), named `name` in the directory.
    pub fn server(&self, name: &str, ip: IpAddr) -> Result<CertFiles> {
        let mut params = self.leaf_params(name, ExtendedKeyUsagePurpose::ServerAuth)?;
        params.subject_alt_names = vec![
            SanType::IpAddress(ip),
            SanType::DnsName("localhost".try_into().map_err(|e| pki_error("SAN", e))?),
        ];
        self.sign(name, params)
    }

    /// A client certificate whose common name is `common_name` (etcd takes it as the user name).
    pub fn client(&self, common_name: &str) -> Result<CertFiles> {
        let params = self.leaf_params(common_name, ExtendedKeyUsagePurpose::ClientAuth)?;
        self.sign(&format!("client-{common_name}"), params)
    }

    fn leaf_params(
        &self,
        common_name: &str,
        usage: ExtendedKeyUsagePurpose,
    ) -> Result<CertificateParams> {
        let mut params = CertificateParams::new(Vec::<String>::new())
            .map_err(|e| pki_error("leaf parameters", e))?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        Ok(params)
    }

    fn sign(&self, name: &str, params: CertificateParams) -> Result<CertFiles> {
        let key = KeyPair::generate().map_err(|e| pki_error("leaf key", e))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| pki_error(name, e))?;
        let files = CertFiles {
            cert: self.dir.path().join(format!("{name}.pem")),
            key: self.dir.path().join(format!("{name}-key.pem")),
        };
        write(&files.cert, &cert.pem())?;
        write(&files.key, &key.serialize_pem())?;
        Ok(files)
    }
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(LabError::io(path))
}
