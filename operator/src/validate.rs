//! Checks the API server's schema cannot make: that every Secret key the spec references exists,
//! that the certificate lifetime is within bounds, and that certificates the user provides
//! (internalTls mode secret) would work.
//! Pure: the read step looks the keys up, this judges them.

use std::collections::BTreeMap;

use crate::build::{Component, ExternalRef, digest, external_refs, provided, tls_refs};
use crate::crd::{ChatSystemSpec, InternalTlsMode};

/// What the read step found for one referenced Secret key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretLookup {
    /// The value's digest (the value itself goes no further than the read step).
    Found(String),
    NoSecret,
    NoKey,
}

/// Digests of every referenced key, or one message per problem (field, Secret and key named).
pub fn validate(
    spec: &ChatSystemSpec,
    lookups: &BTreeMap<(String, String), SecretLookup>,
) -> Result<BTreeMap<(String, String), String>, Vec<String>> {
    let mut digests = BTreeMap::new();
    let mut problems = vec![];
    let external = external_refs(spec);
    // Certificates are re-read by the services when they change: their digests stay out of
    // the config hash, so a renewal does not restart every pod.
    let hashed: Vec<(String, String)> = external.iter().map(|r| (r.secret.clone(), r.key.clone())).collect();
    for ExternalRef { secret, key, field } in external.into_iter().chain(tls_refs(spec)) {
        match lookups.get(&(secret.clone(), key.clone())) {
            Some(SecretLookup::Found(digest)) => {
                if hashed.contains(&(secret.clone(), key.clone())) {
                    digests.insert((secret, key), digest.clone());
                }
            }
            Some(SecretLookup::NoKey) => problems.push(format!("{field}: Secret {secret:?} has no key {key:?}")),
            Some(SecretLookup::NoSecret) | None => problems.push(format!("{field}: Secret {secret:?} not found")),
        }
    }
    if spec.internal_tls.mode == InternalTlsMode::Operator
        && let Err(problem) = crate::tls::parse_lifetime(spec.internal_tls.certificate_lifetime.as_deref())
    {
        problems.push(format!("spec.internalTls.{problem}"));
    }
    problems.dedup();
    if problems.is_empty() { Ok(digests) } else { Err(problems) }
}

/// Looks a key up in a Secret's data as the read step got it.
pub fn lookup(secret: Option<&k8s_openapi::api::core::v1::Secret>, key: &str) -> SecretLookup {
    let Some(secret) = secret else { return SecretLookup::NoSecret };
    let value = secret.data.as_ref().and_then(|d| d.get(key)).map(|v| v.0.as_slice()).or_else(|| {
        // stringData is write-only on a real server; kept for objects built in memory.
        secret.string_data.as_ref().and_then(|d| d.get(key)).map(|v| v.as_bytes())
    });
    match value {
        Some(value) => SecretLookup::Found(digest(value)),
        None => SecretLookup::NoKey,
    }
}

/// Mode secret: the user's certificates as the read step found them, per service: (`tls.crt`,
/// `tls.key`, `ca.crt`) as text; missing keys are `validate`'s to report.
pub type ProvidedFiles = BTreeMap<Component, (String, String, String)>;

/// One message per service whose provided certificate would not work (field and Secret named).
pub fn validate_provided(
    spec: &ChatSystemSpec,
    name: &str,
    files: &ProvidedFiles,
    now: time::OffsetDateTime,
) -> Vec<String> {
    let mut problems = vec![];
    for (component, (cert, key, ca)) in files {
        let Some(source) = provided(spec, *component) else { continue };
        if let Err(why) = crate::tls::check_provided(cert, key, ca, name, *component, now) {
            let what = format!("{}, {} and {}", source.cert, source.key, source.ca);
            problems.push(format!("{}: Secret {:?} ({what}): {why}", source.field, source.secret));
        }
    }
    problems
}
