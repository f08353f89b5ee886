//! What the operator watches: ChatSystems; the children they own (through our label only, so
//! the operator does not cache every Deployment and Secret in the cluster); and the Secrets a
//! spec references by name (credentials, external URLs, provided certificates), by metadata
//! only: a changed value triggers a pass, which rolls the pods that read it (its digest is in
//! their configuration hash) without the operator ever holding other Secrets' data.

use std::collections::BTreeSet;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Controller;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};

use crate::build::{self, LABEL_MANAGED_BY, MANAGER};
use crate::crd::{ChatSystem, ChatSystemSpec};

/// The controller over `namespace` (all namespaces when `None`), ready to `run`.
pub fn controller(client: &Client, namespace: Option<&str>) -> Controller<ChatSystem> {
    fn api<K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>>(
        client: &Client,
        ns: Option<&str>,
    ) -> Api<K> {
        match ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let owned = watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGER}"));
    let controller = Controller::new(api::<ChatSystem>(client, namespace), watcher::Config::default());
    let systems = controller.store();
    controller
        .owns(api::<Deployment>(client, namespace), owned.clone())
        .owns(api::<StatefulSet>(client, namespace), owned.clone())
        .owns(api::<Job>(client, namespace), owned.clone())
        .owns(api::<Service>(client, namespace), owned.clone())
        .owns(api::<ConfigMap>(client, namespace), owned.clone())
        .owns(api::<Secret>(client, namespace), owned.clone())
        .owns(api::<Ingress>(client, namespace), owned.clone())
        .owns(api::<NetworkPolicy>(client, namespace), owned.clone())
        .owns(api::<PodDisruptionBudget>(client, namespace), owned.clone())
        .owns(api::<HorizontalPodAutoscaler>(client, namespace), owned.clone())
        .owns(api::<CronJob>(client, namespace), owned)
        // An Api of PartialObjectMeta asks for metadata only.
        .watches(api::<PartialObjectMeta<Secret>>(client, namespace), watcher::Config::default(), move |secret| {
            referencing(&systems, &secret)
        })
}

/// The ChatSystems of the Secret's namespace whose spec names it.
fn referencing(systems: &Store<ChatSystem>, secret: &PartialObjectMeta<Secret>) -> Vec<ObjectRef<ChatSystem>> {
    let name = secret.name_any();
    systems
        .state()
        .into_iter()
        .filter(|cs| cs.namespace() == secret.namespace() && referenced_secrets(&cs.spec).contains(&name))
        .map(|cs: Arc<ChatSystem>| ObjectRef::from_obj(&*cs))
        .collect()
}

/// Names of the user's Secrets that `spec` reads (not the operator's own).
pub fn referenced_secrets(spec: &ChatSystemSpec) -> BTreeSet<String> {
    build::external_refs(spec).into_iter().chain(build::tls_refs(spec)).map(|r| r.secret).collect()
}
