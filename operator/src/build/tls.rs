//! Internal mutual TLS: the CA and service-certificate Secrets (mode operator), and in every
//! TLS mode each service's certificate directory and the variables that point chatmesh at it.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{EnvVar, KeyToPath, Secret, SecretVolumeSource, Volume, VolumeMount};

use super::config::ExternalRef;
use super::{Component, Ctx};
use crate::crd::{ChatSystemSpec, InternalTlsMode};
use crate::tls::{CA_KEY, CERT_KEY, KEY_KEY, KeyedCert};

/// Where a service's certificate, key and trusted CAs are mounted (a directory, never
/// subPath: the kubelet then updates the files in place when the Secret changes, and chatmesh
/// re-reads them).
pub const TLS_DIR: &str = "/etc/chatmesh/tls";
const VOLUME: &str = "internal-tls";

/// The CA Secret of mode operator.
pub fn ca_secret_name(name: &str) -> String {
    format!("{name}-internal-ca")
}

/// A service's certificate Secret of mode operator.
pub fn service_tls_secret_name(name: &str, component: Component) -> String {
    format!("{name}-{}-tls", component.name())
}

fn tls_secret(ctx: &Ctx, name: String, cert: &KeyedCert, trusted: &str, type_: Option<&str>) -> Secret {
    let data = BTreeMap::from([
        (CERT_KEY.to_string(), ByteString(cert.cert_pem.clone().into_bytes())),
        (KEY_KEY.to_string(), ByteString(cert.key_pem.clone().into_bytes())),
        (CA_KEY.to_string(), ByteString(trusted.as_bytes().to_vec())),
    ]);
    Secret {
        metadata: ctx.meta(name, "internal-tls"),
        type_: Some(type_.unwrap_or("kubernetes.io/tls").into()),
        data: Some(data),
        ..Secret::default()
    }
}

/// Mode operator: the CA Secret and one Secret per service, from what the read step made.
pub(super) fn secrets(ctx: &Ctx) -> Vec<Secret> {
    if ctx.spec.internal_tls.mode != InternalTlsMode::Operator {
        return vec![];
    }
    let Some(material) = &ctx.observed.internal_tls else { return vec![] };
    let ca_type = material.ca_secret_type.as_deref();
    let mut out = vec![tls_secret(ctx, ca_secret_name(&ctx.name), &material.ca, &material.trusted_pem, ca_type)];
    for (component, cert) in &material.services {
        let name = service_tls_secret_name(&ctx.name, *component);
        out.push(tls_secret(ctx, name, cert, &material.trusted_pem, None));
    }
    out
}

fn item(key: &str, path: &str) -> KeyToPath {
    KeyToPath { key: key.into(), path: path.into(), mode: None }
}

/// The Secret volume holding `tls.crt`, `tls.key` and `ca.crt` for `component`, and its mount;
/// None with internal TLS disabled.
pub(super) fn volume(ctx: &Ctx, component: Component) -> Option<(Volume, VolumeMount)> {
    let (secret_name, items) = match ctx.spec.internal_tls.mode {
        InternalTlsMode::Disabled => return None,
        // Every key, as files named like the keys.
        InternalTlsMode::Operator => (service_tls_secret_name(&ctx.name, component), None),
        InternalTlsMode::Secret => {
            let source = provided(ctx.spec, component)?;
            let items = [(source.ca, CA_KEY), (source.cert, CERT_KEY), (source.key, KEY_KEY)]
                .into_iter()
                .map(|(key, file)| item(&key, file))
                .collect();
            (source.secret, Some(items))
        }
    };
    let volume = Volume {
        name: VOLUME.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret_name),
            items,
            // Readable by the pod's group (fsGroup) only: the key stays the service's.
            default_mode: Some(0o440),
            optional: None,
        }),
        ..Volume::default()
    };
    let mount =
        VolumeMount { name: VOLUME.into(), mount_path: TLS_DIR.into(), read_only: Some(true), ..Default::default() };
    Some((volume, mount))
}

/// `CHATMESH_TLS_{CERT,KEY,CA}` pointing at the mounted files; none with TLS disabled.
pub(super) fn env(ctx: &Ctx) -> Vec<EnvVar> {
    if !ctx.internal_tls {
        return vec![];
    }
    [("CHATMESH_TLS_CERT", CERT_KEY), ("CHATMESH_TLS_KEY", KEY_KEY), ("CHATMESH_TLS_CA", CA_KEY)]
        .into_iter()
        .map(|(var, file)| EnvVar { name: var.into(), value: Some(format!("{TLS_DIR}/{file}")), ..EnvVar::default() })
        .collect()
}

fn service_secret(secrets: &crate::crd::ServiceSecrets, component: Component) -> &str {
    match component {
        Component::Gateway => &secrets.gateway,
        Component::User => &secrets.user,
        Component::Friend => &secrets.friend,
        Component::File => &secrets.file,
        Component::Message => &secrets.message,
        Component::Transmit => &secrets.transmit,
        Component::Speech => &secrets.speech,
    }
}

/// Where a service's files are in the user's Secrets (mode secret): the Secret, the spec field
/// naming it, and the keys holding `ca.crt`, `tls.crt` and `tls.key`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProvidedTls {
    pub secret: String,
    pub field: String,
    pub ca: String,
    pub cert: String,
    pub key: String,
}

/// Mode secret: where `component`'s files are; None in the other modes.
pub fn provided(spec: &ChatSystemSpec, component: Component) -> Option<ProvidedTls> {
    let tls = &spec.internal_tls;
    let secrets = tls.secret.as_ref().filter(|_| tls.mode == InternalTlsMode::Secret)?;
    let svc = component.name();
    match (&secrets.services, &secrets.name) {
        (Some(per_service), _) => Some(ProvidedTls {
            secret: service_secret(per_service, component).to_string(),
            field: format!("spec.internalTls.secret.services.{svc}"),
            ca: CA_KEY.into(),
            cert: CERT_KEY.into(),
            key: KEY_KEY.into(),
        }),
        (None, Some(shared)) => Some(ProvidedTls {
            secret: shared.clone(),
            field: "spec.internalTls.secret.name".into(),
            ca: CA_KEY.into(),
            cert: format!("{svc}.crt"),
            key: format!("{svc}.key"),
        }),
        (None, None) => None,
    }
}

/// Mode secret: every key of the user's Secrets that the pods mount, so a missing one is
/// reported instead of pods stuck waiting for their volume.
pub fn tls_refs(spec: &ChatSystemSpec) -> Vec<ExternalRef> {
    let mut refs = vec![];
    for source in Component::ALL.into_iter().filter_map(|c| provided(spec, c)) {
        for key in [&source.ca, &source.cert, &source.key] {
            refs.push(ExternalRef { secret: source.secret.clone(), key: key.clone(), field: source.field.clone() });
        }
    }
    refs.sort();
    refs.dedup();
    refs
}
