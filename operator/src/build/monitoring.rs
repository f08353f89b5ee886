//! The PodMonitor (Prometheus Operator) that scrapes every service's admin port. Built as a
//! dynamic object: the operator does not depend on that CRD's types, and applies it only
//! where the cluster serves the kind.

use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::json;

use super::{Component, Ctx, LABEL_COMPONENT, LABEL_INSTANCE, LABEL_NAME};

pub const GROUP: &str = "monitoring.coreos.com";
pub const VERSION: &str = "v1";
pub const KIND: &str = "PodMonitor";
pub const PLURAL: &str = "podmonitors";

pub fn api_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(GROUP, VERSION, KIND), PLURAL)
}

/// `<name>-services`, unless `spec.observability.podMonitor.enabled` is false.
pub(super) fn pod_monitor(ctx: &Ctx) -> Option<DynamicObject> {
    let spec = &ctx.spec.observability.pod_monitor;
    if !spec.enabled {
        return None;
    }
    let mut meta = ctx.meta(ctx.child("services"), "monitoring");
    let labels = meta.labels.get_or_insert_default();
    for (k, v) in &spec.labels {
        labels.entry(k.clone()).or_insert_with(|| v.clone());
    }
    let services: Vec<&str> = Component::ALL.iter().map(|c| c.name()).collect();
    let mut endpoint = json!({"port": "admin", "path": "/metrics"});
    if let Some(interval) = &spec.interval {
        endpoint["interval"] = json!(interval);
    }
    let mut monitor = DynamicObject::new(&meta.name.clone().unwrap_or_default(), &api_resource()).data(json!({
        "spec": {
            "selector": {
                "matchLabels": {LABEL_NAME: "chatmesh", LABEL_INSTANCE: ctx.name},
                "matchExpressions": [{"key": LABEL_COMPONENT, "operator": "In", "values": services}],
            },
            "podMetricsEndpoints": [endpoint],
        }
    }));
    monitor.metadata = meta;
    Some(monitor)
}
