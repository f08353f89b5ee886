//! The internal CA and the service certificates of `spec.internalTls.mode: operator`.
//!
//! The CA is made once per ChatSystem and then only ever read: every service trusts it, so a
//! new one would break every call until all pods had reloaded. Service certificates are
//! renewed when a third of their lifetime is left; the new one is valid at once and chains to
//! the same CA, so calls keep working while pods pick up the new files at their own pace.
//! Not pure (keys are random, time moves): decisions are separate functions taking `now`.

use std::collections::BTreeMap;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;

use crate::build::Component;

/// Keys of every TLS Secret: a kubernetes.io/tls Secret plus the trusted CA certificates.
pub const CERT_KEY: &str = "tls.crt";
pub const KEY_KEY: &str = "tls.key";
pub const CA_KEY: &str = "ca.crt";

/// Validity of the CA.
pub const CA_LIFETIME: Duration = Duration::from_secs(3650 * 24 * 3600);
/// Validity of a service certificate when the spec sets none.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);
/// Bounds of `spec.internalTls.certificateLifetime`. Under an hour is only for tests.
pub const MIN_LIFETIME: Duration = Duration::from_secs(10);
pub const MAX_LIFETIME: Duration = CA_LIFETIME;
/// Certificates start this long before they are made, for pods whose clock is a little behind.
const BACKDATE: Duration = Duration::from_secs(60);

/// The trust domain of the services' SPIFFE IDs.
pub const TRUST_DOMAIN: &str = "chatmesh.io";

/// Why the TLS material could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The CA Secret exists but holds no usable CA: it is never replaced automatically, since
    /// every service trusts it.
    #[error("Secret {secret} holds no usable CA ({reason}); fix it, or delete it to have a new CA made")]
    BadCa { secret: String, reason: String },
    #[error("making a certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// A certificate and its private key, PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Everything `build` needs for mode operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsMaterial {
    /// The signing CA.
    pub ca: KeyedCert,
    /// The CA certificates services trust (the CA Secret's `ca.crt`: the signing CA, plus any
    /// an administrator added there, e.g. during a CA rollover).
    pub trusted_pem: String,
    pub services: BTreeMap<Component, KeyedCert>,
    /// The type of an adopted CA Secret (a type cannot change) [default: kubernetes.io/tls].
    pub ca_secret_type: Option<String>,
}

/// What `ensure` did.
#[derive(Debug)]
pub struct Ensured {
    pub material: TlsMaterial,
    pub created_ca: bool,
    /// Services that got a new certificate, with why.
    pub issued: Vec<(Component, &'static str)>,
    /// When the first of the certificates should be renewed.
    pub next_renewal: OffsetDateTime,
}

/// The SPIFFE ID a service's certificate names.
pub fn spiffe_id(component: Component) -> String {
    format!("spiffe://{TRUST_DOMAIN}/service/{}", component.name())
}

/// The DNS names of a service's headless Service, short to fully qualified.
pub fn dns_names(name: &str, namespace: &str, component: Component) -> Vec<String> {
    let host = format!("{name}-{}", component.name());
    vec![
        host.clone(),
        format!("{host}.{namespace}"),
        format!("{host}.{namespace}.svc"),
        format!("{host}.{namespace}.svc.cluster.local"),
    ]
}

/// `90d`, `12h`, `30m`, `45s` (the schema's pattern) within the bounds.
pub fn parse_lifetime(text: Option<&str>) -> Result<Duration, String> {
    let Some(text) = text else { return Ok(DEFAULT_LIFETIME) };
    let unit_at = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(unit_at);
    let n: u64 = number.parse().map_err(|_| format!("certificateLifetime {text:?} is not a number and a unit"))?;
    let secs = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        "d" => n.checked_mul(86400),
        _ => None,
    }
    .ok_or_else(|| format!("certificateLifetime {text:?}: use a number and s, m, h or d"))?;
    let lifetime = Duration::from_secs(secs);
    if !(MIN_LIFETIME..=MAX_LIFETIME).contains(&lifetime) {
        return Err(format!("certificateLifetime {text:?} is outside 10s to 3650d (the CA's own lifetime)"));
    }
    Ok(lifetime)
}

/// The CA from its Secret's data (`tls.crt`, `tls.key`, optional `ca.crt`), or why not.
pub fn read_ca(data: &BTreeMap<String, Vec<u8>>) -> Result<(KeyedCert, String), String> {
    let text = |key: &str| {
        let bytes = data.get(key).ok_or_else(|| format!("no key {key}"))?;
        String::from_utf8(bytes.clone()).map_err(|_| format!("{key} is not text"))
    };
    let ca = KeyedCert { cert_pem: text(CERT_KEY)?, key_pem: text(KEY_KEY)? };
    let der = first_der(&ca.cert_pem).ok_or("tls.crt holds no PEM certificate")?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| format!("tls.crt: {e}"))?;
    if !cert.is_ca() {
        return Err("tls.crt is not a CA certificate".into());
    }
    let key = KeyPair::from_pem(&ca.key_pem).map_err(|e| format!("tls.key: {e}"))?;
    if key.subject_public_key_info() != cert.public_key().raw {
        return Err("tls.key is not the key of tls.crt".into());
    }
    // Without ca.crt the CA trusts itself only; with it, it must at least contain the CA.
    let trusted = match data.get(CA_KEY) {
        None => ca.cert_pem.clone(),
        Some(_) => {
            let trusted = text(CA_KEY)?;
            if !pem_ders(&trusted).contains(&der) {
                return Err("ca.crt does not contain tls.crt".into());
            }
            trusted
        }
    };
    Ok((ca, trusted))
}

/// A new self-signed CA naming this ChatSystem.
pub fn new_ca(name: &str, namespace: &str, now: OffsetDateTime) -> Result<KeyedCert, rcgen::Error> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(&format!("chatmesh internal CA {namespace}/{name}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.not_before = now - BACKDATE;
    params.not_after = now + CA_LIFETIME;
    params.serial_number = Some(serial());
    let cert = params.self_signed(&key)?;
    Ok(KeyedCert { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// A new certificate for one service, signed by `ca`.
pub fn issue(
    ca: &KeyedCert,
    name: &str,
    namespace: &str,
    component: Component,
    lifetime: Duration,
    now: OffsetDateTime,
) -> Result<KeyedCert, rcgen::Error> {
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)?;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(&format!("{name}-{}.{namespace}", component.name()));
    params.subject_alt_names = vec![SanType::URI(spiffe_id(component).try_into()?)];
    for dns in dns_names(name, namespace, component) {
        params.subject_alt_names.push(SanType::DnsName(dns.try_into()?));
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = now - BACKDATE;
    params.not_after = now + lifetime;
    params.serial_number = Some(serial());
    let cert = params.signed_by(&key, &issuer)?;
    Ok(KeyedCert { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "chatmesh");
    dn.push(DnType::CommonName, common_name);
    dn
}

fn serial() -> SerialNumber {
    // 127 random bits: positive as DER reads it, unique without bookkeeping.
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

/// DER of every certificate in a PEM text.
fn pem_ders(text: &str) -> Vec<Vec<u8>> {
    Pem::iter_from_buffer(text.as_bytes())
        .filter_map(Result::ok)
        .filter(|p| p.label == "CERTIFICATE")
        .map(|p| p.contents)
        .collect()
}

fn first_der(text: &str) -> Option<Vec<u8>> {
    pem_ders(text).into_iter().next()
}

/// Why a service's current certificate must be replaced now, or None while it is good:
/// missing or unreadable, not the key's, not signed by `ca`, other names than it should
/// have, outliving a fresh one (the lifetime was shortened), or less than a third of
/// `lifetime` left.
pub fn renewal_reason(
    current: Option<&KeyedCert>,
    ca: &KeyedCert,
    name: &str,
    namespace: &str,
    component: Component,
    lifetime: Duration,
    now: OffsetDateTime,
) -> Option<&'static str> {
    let Some(current) = current else { return Some("missing") };
    let Some(der) = first_der(&current.cert_pem) else { return Some("unreadable") };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(&der) else { return Some("unreadable") };
    match KeyPair::from_pem(&current.key_pem) {
        Ok(key) if key.subject_public_key_info() == cert.public_key().raw => {}
        _ => return Some("key mismatch"),
    }
    let ca_der = first_der(&ca.cert_pem)?;
    let Ok((_, ca_cert)) = x509_parser::parse_x509_certificate(&ca_der) else { return Some("unreadable") };
    if cert.verify_signature(Some(ca_cert.public_key())).is_err() {
        return Some("other CA");
    }
    let mut want = dns_names(name, namespace, component);
    want.push(spiffe_id(component));
    want.sort();
    if names(&cert) != want {
        return Some("names changed");
    }
    let left = expiry(&cert) - now;
    if left > lifetime {
        return Some("lifetime shortened");
    }
    if left < lifetime / 3 {
        return Some("expiring");
    }
    None
}

/// Mode secret: why certificates a user provides for `component` would not work, or Ok. The
/// services would refuse them at start (or their peers would refuse the calls), so they are
/// checked before anything is applied: the certificate and key match, the certificate names
/// the service (its SPIFFE ID, and `<name>-<service>`, the host its callers dial), is signed by
/// a CA in `ca.crt` and has not expired.
pub fn check_provided(
    cert_pem: &str,
    key_pem: &str,
    trusted_pem: &str,
    name: &str,
    component: Component,
    now: OffsetDateTime,
) -> Result<(), String> {
    let der = first_der(cert_pem).ok_or("the certificate holds no PEM certificate")?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| format!("the certificate: {e}"))?;
    let key = KeyPair::from_pem(key_pem).map_err(|e| format!("the key: {e}"))?;
    if key.subject_public_key_info() != cert.public_key().raw {
        return Err("the key is not the certificate's".into());
    }
    let names = names(&cert);
    for want in [spiffe_id(component), format!("{name}-{}", component.name())] {
        if !names.contains(&want) {
            return Err(format!("the certificate does not name {want} (it names {names:?})"));
        }
    }
    let cas = pem_ders(trusted_pem);
    if cas.is_empty() {
        return Err("ca.crt holds no PEM certificate".into());
    }
    let signed = cas.iter().any(|ca| {
        x509_parser::parse_x509_certificate(ca)
            .is_ok_and(|(_, ca)| cert.verify_signature(Some(ca.public_key())).is_ok())
    });
    if !signed {
        return Err("the certificate is not signed by a CA in ca.crt".into());
    }
    if expiry(&cert) <= now {
        return Err(format!("the certificate expired at {}", expiry(&cert)));
    }
    Ok(())
}

/// When a certificate issued for `lifetime` is due: a third of `lifetime` before it expires.
pub fn renewal_due(cert: &KeyedCert, lifetime: Duration) -> Option<OffsetDateTime> {
    let der = first_der(&cert.cert_pem)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    Some(expiry(&cert) - lifetime / 3)
}

fn expiry(cert: &X509Certificate) -> OffsetDateTime {
    cert.validity().not_after.to_datetime()
}

/// The DNS and URI SANs of a certificate, sorted.
pub fn names(cert: &X509Certificate) -> Vec<String> {
    let mut out = vec![];
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => out.push(dns.to_string()),
                GeneralName::URI(uri) => out.push(uri.to_string()),
                _ => {}
            }
        }
    }
    out.sort();
    out
}

/// The CA (read, or made when there is none) and a valid certificate per service: the current
/// one where it is good, a new one where `renewal_reason` says so.
pub fn ensure(
    name: &str,
    namespace: &str,
    ca_secret: Option<(&str, &BTreeMap<String, Vec<u8>>)>,
    current: &BTreeMap<Component, KeyedCert>,
    lifetime: Duration,
    now: OffsetDateTime,
) -> Result<Ensured, TlsError> {
    let (ca, trusted_pem, created_ca) = match ca_secret {
        Some((secret, data)) => {
            let (ca, trusted) =
                read_ca(data).map_err(|reason| TlsError::BadCa { secret: secret.to_string(), reason })?;
            (ca, trusted, false)
        }
        None => {
            let ca = new_ca(name, namespace, now)?;
            let trusted = ca.cert_pem.clone();
            (ca, trusted, true)
        }
    };
    let mut services = BTreeMap::new();
    let mut issued = vec![];
    let mut next_renewal = now + CA_LIFETIME;
    for component in Component::ALL {
        let existing = current.get(&component);
        let cert = match renewal_reason(existing, &ca, name, namespace, component, lifetime, now) {
            None => existing.cloned().expect("no reason means a current certificate"),
            Some(reason) => {
                issued.push((component, reason));
                issue(&ca, name, namespace, component, lifetime, now)?
            }
        };
        if let Some(due) = renewal_due(&cert, lifetime) {
            next_renewal = next_renewal.min(due);
        }
        services.insert(component, cert);
    }
    let material = TlsMaterial { ca, trusted_pem, services, ca_secret_type: None };
    Ok(Ensured { material, created_ca, issued, next_renewal })
}
