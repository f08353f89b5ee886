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
    let tls = &ctx.spec.internal_tls;
    let standard = || Some(vec![item(CA_KEY, CA_KEY), item(CERT_KEY, CERT_KEY), item(KEY_KEY, KEY_KEY)]);
    let (secret_name, items) = match tls.mode {
        InternalTlsMode::Disabled => return None,
        InternalTlsMode::Operator => (service_tls_secret_name(&ctx.name, component), None),
        InternalTlsMode::Secret => {
            let secrets = tls.secret.as_ref()?;
            match (&secrets.services, &secrets.name) {
                (Some(per_service), _) => (service_secret(per_service, component).to_string(), standard()),
                (None, Some(shared)) => {
                    let svc = component.name();
                    let items = vec![
                        item(CA_KEY, CA_KEY),
                        item(&format!("{svc}.crt"), CERT_KEY),
                        item(&format!("{svc}.key"), KEY_KEY),
                    ];
                    (shared.clone(), Some(items))
                }
                (None, None) => return None,
            }
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

/// Mode secret: every key of the user's Secrets that the pods mount, so a missing one is
/// reported instead of pods stuck waiting for their volume.
pub fn tls_refs(spec: &ChatSystemSpec) -> Vec<ExternalRef> {
    let tls = &spec.internal_tls;
    let Some(secrets) = tls.secret.as_ref().filter(|_| tls.mode == InternalTlsMode::Secret) else { return vec![] };
    let mut refs = vec![];
    for component in Component::ALL {
        let (secret, keys) = match (&secrets.services, &secrets.name) {
            (Some(per_service), _) => (
                service_secret(per_service, component).to_string(),
                [CA_KEY.to_string(), CERT_KEY.to_string(), KEY_KEY.to_string()],
            ),
            (None, Some(shared)) => {
                let svc = component.name();
                (shared.clone(), [CA_KEY.to_string(), format!("{svc}.crt"), format!("{svc}.key")])
            }
            (None, None) => continue,
        };
        let field = match secrets.services {
            Some(_) => format!("spec.internalTls.secret.services.{}", component.name()),
            None => "spec.internalTls.secret.name".to_string(),
        };
        for key in keys {
            refs.push(ExternalRef { secret: secret.clone(), key, field: field.clone() });
        }
    }
    refs.sort();
    refs.dedup();
    refs
}
