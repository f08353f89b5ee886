//! How clients reach the gateway: its public Service and the optional Ingress.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule, IngressServiceBackend, IngressSpec,
    IngressTLS, ServiceBackendPort,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;

use super::Ctx;
use crate::crd::{ChatSystem, ServiceType};

fn public_name(ctx: &Ctx) -> String {
    ctx.child("public")
}

pub(super) fn public_service(ctx: &Ctx) -> Service {
    let svc = &ctx.spec.gateway.service;
    let mut metadata = ctx.meta(public_name(ctx), "gateway");
    if !svc.annotations.is_empty() {
        metadata.annotations = Some(svc.annotations.clone());
    }
    let node_ports = svc.type_ != ServiceType::ClusterIP;
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some(svc.type_.as_str().into()),
            selector: Some(ctx.selector("gateway")),
            ports: Some(vec![
                ServicePort {
                    name: Some("http".into()),
                    port: svc.http_port,
                    target_port: Some(IntOrString::String("http".into())),
                    node_port: svc.http_node_port.filter(|_| node_ports),
                    ..ServicePort::default()
                },
                ServicePort {
                    name: Some("ws".into()),
                    port: svc.websocket_port,
                    target_port: Some(IntOrString::String("ws".into())),
                    node_port: svc.websocket_node_port.filter(|_| node_ports),
                    ..ServicePort::default()
                },
            ]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// One rule for the HTTP port: the gateway serves its WebSocket at `/ws` there too, so one
/// host covers both.
pub(super) fn ingress(ctx: &Ctx) -> Option<Ingress> {
    let spec = ctx.spec.gateway.ingress.as_ref()?;
    let mut metadata = ctx.meta(public_name(ctx), "gateway");
    // Defaults for ingress-nginx (other controllers ignore them), each overridable by the
    // spec's annotations: notification WebSockets stay open far longer than the 60 s default,
    // and an upload may be as large as the file service takes (64 MiB per file by default).
    let mut annotations: BTreeMap<String, String> =
        INGRESS_DEFAULTS.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    annotations.extend(spec.annotations.clone());
    metadata.annotations = Some(annotations);
    Some(Ingress {
        metadata,
        spec: Some(IngressSpec {
            ingress_class_name: spec.class_name.clone(),
            tls: spec.tls_secret_name.as_ref().map(|secret| {
                vec![IngressTLS { hosts: Some(vec![spec.host.clone()]), secret_name: Some(secret.clone()) }]
            }),
            rules: Some(vec![IngressRule {
                host: Some(spec.host.clone()),
                http: Some(HTTPIngressRuleValue {
                    paths: vec![HTTPIngressPath {
                        path: Some("/".into()),
                        path_type: "Prefix".into(),
                        backend: IngressBackend {
                            service: Some(IngressServiceBackend {
                                name: public_name(ctx),
                                port: Some(ServiceBackendPort { name: Some("http".into()), number: None }),
                            }),
                            resource: None,
                        },
                    }],
                }),
            }]),
            ..IngressSpec::default()
        }),
        ..Ingress::default()
    })
}

/// ingress-nginx annotations set unless the spec sets them.
pub const INGRESS_DEFAULTS: [(&str, &str); 3] = [
    ("nginx.ingress.kubernetes.io/proxy-read-timeout", "3600"),
    ("nginx.ingress.kubernetes.io/proxy-send-timeout", "3600"),
    ("nginx.ingress.kubernetes.io/proxy-body-size", "100m"),
];

/// Where clients connect: the Ingress URL, a load balancer's address once it has one, or the
/// Service's cluster DNS name, with the HTTP port.
pub fn gateway_endpoint(cs: &ChatSystem, public: Option<&Service>) -> String {
    use kube::ResourceExt;
    let spec = &cs.spec.gateway;
    if let Some(ingress) = &spec.ingress {
        let scheme = if ingress.tls_secret_name.is_some() { "https" } else { "http" };
        return format!("{scheme}://{}", ingress.host);
    }
    let port = spec.service.http_port;
    let lb = public
        .and_then(|svc| svc.status.as_ref()?.load_balancer.as_ref()?.ingress.as_ref()?.first().cloned())
        .and_then(|ingress| ingress.hostname.or(ingress.ip));
    match lb {
        Some(address) if spec.service.type_ == ServiceType::LoadBalancer => format!("{address}:{port}"),
        _ => format!("{}-public.{}.svc:{port}", cs.name_any(), cs.namespace().unwrap_or_default()),
    }
}
