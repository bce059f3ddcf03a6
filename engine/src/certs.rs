//! Certificate generation (rcgen): a CA, a server certificate with the machine's names and addresses,
//! and a client certificate. Used at boot by the engine and on the host by `ferry up`.
use crate::error::{Context, Error, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use std::net::IpAddr;
use time::{Duration, OffsetDateTime};

/// PEM texts of one generated set. Private keys are only ever written to files with mode 0600.
pub struct Bundle {
    pub ca_cert: String,
    pub ca_key: String,
    pub server_cert: String,
    pub server_key: String,
    pub client_cert: String,
    pub client_key: String,
}

impl Bundle {
    /// Write all six files with docker's names (ca, server, client = cert/key); keys get mode 0600.
    pub fn write_to(&self, dir: &std::path::Path) -> Result<()> {
        std::fs::create_dir_all(dir).ctx(|| format!("create {}", dir.display()))?;
        for (name, text, mode) in [
            ("ca.pem", &self.ca_cert, 0o644),
            ("ca-key.pem", &self.ca_key, 0o600),
            ("server.pem", &self.server_cert, 0o644),
            ("server-key.pem", &self.server_key, 0o600),
            ("cert.pem", &self.client_cert, 0o644),
            ("key.pem", &self.client_key, 0o600),
        ] {
            write_file(&dir.join(name), text, mode)?;
        }
        Ok(())
    }
}

pub struct Ca {
    issuer: rcgen::Issuer<'static, KeyPair>,
    pub cert_pem: String,
}

fn validity(p: &mut CertificateParams, now: OffsetDateTime, days: i64) {
    // An hour of slack for clocks that disagree a little between host and VM.
    p.not_before = now - Duration::hours(1);
    p.not_after = now + Duration::days(days);
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Ferry");
    dn.push(DnType::CommonName, cn);
    dn
}

/// Refuse to mint certificates with a clock before the build (they would be born expired elsewhere).
pub fn check_clock(now: OffsetDateTime, floor_unix: Option<i64>) -> Result<()> {
    if let Some(f) = floor_unix {
        if now.unix_timestamp() < f {
            return Err(Error::of(
                crate::error::Kind::ClockBeforeBuild,
                format!("the clock ({}) is before this image was built ({f}); refusing to generate certificates", now.unix_timestamp()),
            ));
        }
    }
    Ok(())
}

pub fn new_ca(now: OffsetDateTime) -> Result<Ca> {
    let mut p = CertificateParams::default();
    p.distinguished_name = name("Ferry CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    validity(&mut p, now, 3650);
    let key = KeyPair::generate().ctx(|| "generate CA key".into())?;
    let cert = p.self_signed(&key).ctx(|| "self-sign CA".into())?;
    Ok(Ca { cert_pem: cert.pem(), issuer: rcgen::Issuer::new(p, key) })
}

impl Ca {
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Rebuild a CA from its PEM files (to issue more certificates with it).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca> {
        let key = KeyPair::from_pem(key_pem).ctx(|| "parse CA key".into())?;
        let issuer = rcgen::Issuer::from_ca_cert_pem(cert_pem, key).ctx(|| "parse CA certificate".into())?;
        Ok(Ca { issuer, cert_pem: cert_pem.to_string() })
    }

    /// A server certificate for these DNS names and IP addresses. Returns (cert PEM, key PEM).
    pub fn server(&self, names: &[String], ips: &[IpAddr], now: OffsetDateTime) -> Result<(String, String)> {
        let mut p = CertificateParams::default();
        p.distinguished_name = name(names.first().map(String::as_str).unwrap_or("ferry"));
        p.subject_alt_names = names
            .iter()
            .map(|n| n.clone().try_into().map(SanType::DnsName).ctx(|| format!("DNS name {n:?}")))
            .collect::<Result<Vec<_>>>()?;
        p.subject_alt_names.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        validity(&mut p, now, 1095);
        let key = KeyPair::generate().ctx(|| "generate server key".into())?;
        let cert = p.signed_by(&key, &self.issuer).ctx(|| "sign server certificate".into())?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// A client certificate (what the docker CLI presents). Returns (cert PEM, key PEM).
    pub fn client(&self, cn: &str, now: OffsetDateTime) -> Result<(String, String)> {
        let mut p = CertificateParams::default();
        p.distinguished_name = name(cn);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        validity(&mut p, now, 1095);
        let key = KeyPair::generate().ctx(|| "generate client key".into())?;
        let cert = p.signed_by(&key, &self.issuer).ctx(|| "sign client certificate".into())?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// A server certificate's DNS names: the hostname and localhost.
pub fn server_names(hostname: &str) -> Vec<String> {
    let mut names = vec![hostname.to_string()];
    if hostname != "localhost" {
        names.push("localhost".into());
    }
    names
}

/// A server certificate's addresses: the loopbacks and every address given.
pub fn server_ips(ips: &[IpAddr]) -> Vec<IpAddr> {
    let mut all: Vec<IpAddr> = vec![IpAddr::from([127, 0, 0, 1]), IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1])];
    for ip in ips {
        if !all.contains(ip) {
            all.push(*ip);
        }
    }
    all
}

/// The usual names: the hostname, localhost, and every address given plus the loopbacks.
pub fn generate(hostname: &str, ips: &[IpAddr], now: OffsetDateTime) -> Result<Bundle> {
    let ca = new_ca(now)?;
    let (server_cert, server_key) = ca.server(&server_names(hostname), &server_ips(ips), now)?;
    let (client_cert, client_key) = ca.client("ferry-client", now)?;
    Ok(Bundle { ca_key: ca.key_pem(), ca_cert: ca.cert_pem, server_cert, server_key, client_cert, client_key })
}

/// Replace a file with the given mode (keys: 0600), never leaving half of it (`ferry_contract::file`).
pub fn write_file(path: &std::path::Path, text: &str, mode: u32) -> Result<()> {
    ferry_contract::file::write_atomic(path, text.as_bytes(), mode).ctx(|| format!("write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::*;

    fn der(pem: &str) -> Vec<u8> {
        let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        p.contents
    }

    #[test]
    fn generated_set_chains_and_carries_sans() {
        let now = OffsetDateTime::now_utc();
        let b = generate("box", &["10.0.2.15".parse().unwrap()], now).unwrap();
        let ca_der = der(&b.ca_cert);
        let (_, ca) = X509Certificate::from_der(&ca_der).unwrap();
        assert!(ca.is_ca());
        let sd = der(&b.server_cert);
        let (_, server) = X509Certificate::from_der(&sd).unwrap();
        server.verify_signature(Some(ca.public_key())).unwrap();
        let san = server.subject_alternative_name().unwrap().unwrap().value;
        let text = format!("{:?}", san.general_names);
        for want in ["\"box\"", "\"localhost\"", "[10, 0, 2, 15]", "[127, 0, 0, 1]"] {
            assert!(text.contains(want), "{want} missing from {text}");
        }
        let cd = der(&b.client_cert);
        let (_, client) = X509Certificate::from_der(&cd).unwrap();
        client.verify_signature(Some(ca.public_key())).unwrap();
        let eku = client.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        assert!(b.server_key.contains("PRIVATE KEY"));
    }

    #[test]
    fn clock_floor_is_enforced() {
        let now = OffsetDateTime::from_unix_timestamp(1_000).unwrap();
        assert!(check_clock(now, Some(2_000)).is_err());
        assert!(check_clock(now, Some(500)).is_ok());
        assert!(check_clock(now, None).is_ok());
    }

    #[test]
    fn ca_round_trips_through_pem() {
        let now = OffsetDateTime::now_utc();
        let ca = new_ca(now).unwrap();
        let again = Ca::from_pem(&ca.cert_pem, &ca.key_pem()).unwrap();
        let (c, _) = again.client("x", now).unwrap();
        let cd = der(&c);
        let cad = der(&ca.cert_pem);
        let (_, cert) = X509Certificate::from_der(&cd).unwrap();
        let (_, cac) = X509Certificate::from_der(&cad).unwrap();
        cert.verify_signature(Some(cac.public_key())).unwrap();
    }
}
