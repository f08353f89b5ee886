//! NetworkPolicies: deny all ingress to the ChatSystem's pods, then open each port to exactly
//! the pods that need it. Egress stays open (DNS, and external servers and APIs whose
//! addresses the operator cannot know).

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{
    ADMIN_PORT, Component, Ctx, GATEWAY_HTTP_PORT, GATEWAY_WS_PORT, Infra, LABEL_COMPONENT, LABEL_INSTANCE, LABEL_NAME,
};

/// Which service calls which services' gRPC ports: the one table the policies derive from,
/// the network side of the services' per-RPC authorization.
pub const CALLS: [(Component, &[Component]); 5] = [
    (
        Component::Gateway,
        &[
            Component::User,
            Component::Friend,
            Component::File,
            Component::Transmit,
            Component::Message,
            Component::Speech,
        ],
    ),
    (Component::User, &[Component::File]),
    (Component::Friend, &[Component::User]),
    (Component::Transmit, &[Component::User, Component::File]),
    (Component::Message, &[Component::User, Component::File]),
];

/// The pods (by component label) that use a managed server; `migrate` is the schema Job,
/// `backup` the scheduled dump (and a restore pod labelled like it).
pub fn infra_clients(infra: Infra) -> &'static [&'static str] {
    match infra {
        Infra::Mysql => &["user", "friend", "file", "message", "transmit", "migrate", "backup"],
        // friend announces membership changes that transmit caches by (services/common/src/members.rs).
        Infra::Redis => &["gateway", "user", "friend", "transmit"],
        Infra::Rabbitmq => &["transmit", "message"],
        Infra::Elasticsearch => &["user", "friend", "message"],
    }
}

/// The services that call `callee`, from `CALLS`.
pub fn callers(callee: Component) -> Vec<Component> {
    CALLS.iter().filter(|(_, callees)| callees.contains(&callee)).map(|(caller, _)| *caller).collect()
}

/// The namespace (by its name label) admitted to the admin port when the spec names none.
const DEFAULT_METRICS_NAMESPACE: &str = "monitoring";

fn tcp(port: i32) -> NetworkPolicyPort {
    NetworkPolicyPort { port: Some(IntOrString::Int(port)), protocol: Some("TCP".into()), end_port: None }
}

/// Pods of this ChatSystem whose component is one of `components`.
fn pods(ctx: &Ctx, components: &[&str]) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        pod_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([
                (LABEL_NAME.into(), "chatmesh".into()),
                (LABEL_INSTANCE.into(), ctx.name.clone()),
            ])),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: LABEL_COMPONENT.into(),
                operator: "In".into(),
                values: Some(components.iter().map(|c| c.to_string()).collect()),
            }]),
        }),
        ..NetworkPolicyPeer::default()
    }
}

fn policy(
    ctx: &Ctx,
    name: String,
    component: &str,
    pod_selector: LabelSelector,
    ingress: Vec<NetworkPolicyIngressRule>,
) -> NetworkPolicy {
    NetworkPolicy {
        metadata: ctx.meta(name, component),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(pod_selector),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: (!ingress.is_empty()).then_some(ingress),
            ..NetworkPolicySpec::default()
        }),
    }
}

fn selecting(labels: BTreeMap<String, String>) -> LabelSelector {
    LabelSelector { match_labels: Some(labels), ..LabelSelector::default() }
}

/// The admin port (`/metrics`) from the monitoring namespaces only; kubelet probes are not
/// subject to NetworkPolicies.
fn metrics_rule(ctx: &Ctx) -> NetworkPolicyIngressRule {
    let namespaces = ctx.spec.network_policy.metrics_from.clone().unwrap_or_else(|| {
        selecting(BTreeMap::from([("kubernetes.io/metadata.name".into(), DEFAULT_METRICS_NAMESPACE.into())]))
    });
    NetworkPolicyIngressRule {
        from: Some(vec![NetworkPolicyPeer { namespace_selector: Some(namespaces), ..NetworkPolicyPeer::default() }]),
        ports: Some(vec![tcp(ADMIN_PORT)]),
    }
}

pub(super) fn policies(ctx: &Ctx) -> Vec<NetworkPolicy> {
    let spec = &ctx.spec.network_policy;
    if !spec.enabled {
        return vec![];
    }
    let everything =
        selecting(BTreeMap::from([(LABEL_NAME.into(), "chatmesh".into()), (LABEL_INSTANCE.into(), ctx.name.clone())]));
    // No rule: nothing reaches a pod of this ChatSystem unless a policy below allows it.
    let mut out = vec![policy(ctx, ctx.child("default-deny"), "network", everything, vec![])];

    for component in Component::ALL {
        let name = component.name();
        let mut rules = vec![];
        match component.grpc_port() {
            None => rules.push(NetworkPolicyIngressRule {
                // No `from`: any source (the gateway is the public entry).
                from: (!spec.gateway_from.is_empty()).then(|| spec.gateway_from.clone()),
                ports: Some(vec![tcp(GATEWAY_HTTP_PORT), tcp(GATEWAY_WS_PORT)]),
            }),
            Some(port) => {
                let callers: Vec<&str> = callers(component).into_iter().map(Component::name).collect();
                if !callers.is_empty() {
                    rules.push(NetworkPolicyIngressRule {
                        from: Some(vec![pods(ctx, &callers)]),
                        ports: Some(vec![tcp(port)]),
                    });
                }
            }
        }
        rules.push(metrics_rule(ctx));
        out.push(policy(ctx, ctx.child(name), name, selecting(ctx.selector(name)), rules));
    }

    for infra in Infra::ALL {
        if infra.managed(ctx.spec).is_none() {
            continue;
        }
        let name = infra.name();
        let rule = NetworkPolicyIngressRule {
            from: Some(vec![pods(ctx, infra_clients(infra))]),
            ports: Some(vec![tcp(infra.port())]),
        };
        out.push(policy(ctx, ctx.child(name), name, selecting(ctx.selector(name)), vec![rule]));
    }
    out
}
