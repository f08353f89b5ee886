//! Desired state: every child object a `ChatSystem` needs, computed from its spec and what the
//! read step observed. Pure: no client, no clock, no randomness, so it is tested from YAML
//! fixtures alone.

pub mod backup;
mod config;
mod gateway;
mod infra;
pub mod monitoring;
mod network;
pub mod resources;
mod tls;
mod workloads;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret, Service};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

use crate::crd::{ChatSystem, ChatSystemSpec, Dependency, ExternalSpec, ManagedSpec};

pub use config::{CONNECTIONS_KEYS, ExternalRef, credential_keys, credential_server, external_refs};
pub use gateway::gateway_endpoint;
pub use network::{CALLS, callers, infra_clients};
pub use tls::{ProvidedTls, TLS_DIR, ca_secret_name, provided, service_tls_secret_name, tls_refs};

/// The one field manager of every server-side apply, and the `managed-by` label value.
pub const MANAGER: &str = "chatmesh-operator";
pub const LABEL_NAME: &str = "app.kubernetes.io/name";
pub const LABEL_INSTANCE: &str = "app.kubernetes.io/instance";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
pub const LABEL_PART_OF: &str = "app.kubernetes.io/part-of";
/// Pod-template annotation whose change rolls the pods when their configuration changes.
pub const CONFIG_HASH_ANNOTATION: &str = "chatmesh.io/config-hash";

/// Admin HTTP port of every chatmesh process: `/healthz`, `/readyz`, `/metrics`.
pub const ADMIN_PORT: i32 = 9100;
pub const GATEWAY_HTTP_PORT: i32 = 9000;
pub const GATEWAY_WS_PORT: i32 = 9001;

/// The chatmesh services, each one Deployment running `chatmesh --target <name>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Component {
    Gateway,
    User,
    Friend,
    File,
    Message,
    Transmit,
    Speech,
}

impl Component {
    pub const ALL: [Component; 7] = [
        Component::Gateway,
        Component::User,
        Component::Friend,
        Component::File,
        Component::Message,
        Component::Transmit,
        Component::Speech,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Gateway => "gateway",
            Self::User => "user",
            Self::Friend => "friend",
            Self::File => "file",
            Self::Message => "message",
            Self::Transmit => "transmit",
            Self::Speech => "speech",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }

    /// The gRPC port (the seed's); the gateway has HTTP and WebSocket ports instead.
    pub fn grpc_port(self) -> Option<i32> {
        match self {
            Self::Gateway => None,
            Self::Speech => Some(10001),
            Self::File => Some(10002),
            Self::User => Some(10003),
            Self::Transmit => Some(10004),
            Self::Message => Some(10005),
            Self::Friend => Some(10006),
        }
    }

    pub fn spec(self, spec: &ChatSystemSpec) -> &crate::crd::ComponentSpec {
        let s = &spec.services;
        match self {
            Self::Gateway => &s.gateway,
            Self::User => &s.user,
            Self::Friend => &s.friend,
            Self::File => &s.file,
            Self::Message => &s.message,
            Self::Transmit => &s.transmit,
            Self::Speech => &s.speech,
        }
    }
}

/// The servers a ChatSystem depends on, each managed or external.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Infra {
    Mysql,
    Redis,
    Rabbitmq,
    Elasticsearch,
}

impl Infra {
    pub const ALL: [Infra; 4] = [Infra::Mysql, Infra::Redis, Infra::Rabbitmq, Infra::Elasticsearch];

    pub fn name(self) -> &'static str {
        match self {
            Self::Mysql => "mysql",
            Self::Redis => "redis",
            Self::Rabbitmq => "rabbitmq",
            Self::Elasticsearch => "elasticsearch",
        }
    }

    pub fn dependency(self, spec: &ChatSystemSpec) -> &Dependency {
        match self {
            Self::Mysql => &spec.mysql,
            Self::Redis => &spec.redis,
            Self::Rabbitmq => &spec.rabbitmq,
            Self::Elasticsearch => &spec.elasticsearch,
        }
    }

    pub fn managed(self, spec: &ChatSystemSpec) -> Option<&ManagedSpec> {
        let dep = self.dependency(spec);
        // The schema forbids both; should both ever arrive, external wins (it is explicit).
        if dep.external.is_some() { None } else { dep.managed.as_ref() }
    }

    /// The port the managed server listens on.
    pub fn port(self) -> i32 {
        match self {
            Self::Mysql => 3306,
            Self::Redis => 6379,
            Self::Rabbitmq => 5672,
            Self::Elasticsearch => 9200,
        }
    }

    pub fn external(self, spec: &ChatSystemSpec) -> Option<&ExternalSpec> {
        self.dependency(spec).external.as_ref()
    }
}

/// State of a migration Job, as read from the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobState {
    Running,
    Succeeded,
    Failed,
}

/// What the read step found, as far as building needs it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    /// The generated passwords, complete for this spec (see `config::credential_keys`).
    pub credentials: BTreeMap<String, String>,
    /// Digest of each referenced external Secret key's value, keyed by (secret, key); part of
    /// the config hash, so rotating an external URL rolls the pods.
    pub external_digests: BTreeMap<(String, String), String>,
    /// Image of each chatmesh service Deployment that exists now.
    pub deployed_images: BTreeMap<Component, String>,
    /// States of this ChatSystem's migration Jobs, by name.
    pub jobs: BTreeMap<String, JobState>,
    /// Mode operator: the CA and every service's certificate, made or renewed by the read
    /// step as needed (None: no TLS Secrets are built).
    pub internal_tls: Option<crate::tls::TlsMaterial>,
}

/// Defaults that come from the operator rather than the spec.
#[derive(Clone, Debug, PartialEq)]
pub struct Defaults {
    /// Image tag when `spec.image.tag` is unset.
    pub tag: String,
}

impl Default for Defaults {
    fn default() -> Self {
        Self { tag: env!("CARGO_PKG_VERSION").into() }
    }
}

/// Every child object, grouped by kind; applied in the order of the fields (configuration
/// before the workloads that read it, the migration Job before the Deployments).
#[derive(Clone, Debug, Default)]
pub struct Desired {
    pub secrets: Vec<Secret>,
    pub config_maps: Vec<ConfigMap>,
    pub pvcs: Vec<PersistentVolumeClaim>,
    pub services: Vec<Service>,
    pub stateful_sets: Vec<StatefulSet>,
    pub jobs: Vec<Job>,
    pub deployments: Vec<Deployment>,
    pub ingresses: Vec<Ingress>,
    pub network_policies: Vec<NetworkPolicy>,
    /// One per service with more than one replica: a node drain evicts them one at a time.
    pub pdbs: Vec<PodDisruptionBudget>,
    /// One per service with `autoscaling`.
    pub hpas: Vec<HorizontalPodAutoscaler>,
    /// The MariaDB backup, with `backup`.
    pub cron_jobs: Vec<CronJob>,
    /// The PodMonitor of the services' admin ports, unless disabled; applied only where the
    /// cluster serves that kind.
    pub pod_monitor: Option<kube::api::DynamicObject>,
    /// Hash of all configuration the pods read; an annotation on every pod template.
    pub config_hash: String,
    /// The image the spec asks for.
    pub target_image: String,
    /// The migration Job for `target_image` and its state (None: just created).
    pub migration_job: String,
    pub migration_state: Option<JobState>,
    /// Services not yet on `target_image` because the migration has not succeeded: kept on their
    /// old image, or not created yet on a first install.
    pub held: Vec<Component>,
}

impl Desired {
    /// (kind, name) of every object, for orphan detection.
    pub fn names(&self) -> Vec<(&'static str, String)> {
        fn each<K: Resource<DynamicType = ()> + k8s_openapi::Resource>(
            out: &mut Vec<(&'static str, String)>,
            items: &[K],
        ) {
            for item in items {
                out.push((kind_of::<K>(), item.meta().name.clone().unwrap_or_default()));
            }
        }
        let mut out = vec![];
        each(&mut out, &self.secrets);
        each(&mut out, &self.config_maps);
        each(&mut out, &self.pvcs);
        each(&mut out, &self.services);
        each(&mut out, &self.stateful_sets);
        each(&mut out, &self.jobs);
        each(&mut out, &self.deployments);
        each(&mut out, &self.ingresses);
        each(&mut out, &self.network_policies);
        each(&mut out, &self.pdbs);
        each(&mut out, &self.hpas);
        each(&mut out, &self.cron_jobs);
        out
    }
}

/// `K`'s kind, e.g. `Deployment`.
pub fn kind_of<K: k8s_openapi::Resource>() -> &'static str {
    K::KIND
}

/// Builds every child object. `observed.credentials` must already hold every key of
/// `credential_keys(spec)`.
pub fn build(cs: &ChatSystem, observed: &Observed, defaults: &Defaults) -> Desired {
    let ctx = Ctx::new(cs, observed, defaults);
    let mut desired = Desired { target_image: ctx.image.clone(), ..Desired::default() };

    let (credentials, connections, config_map) = config::objects(&ctx);
    desired.config_hash = config::hash(&connections, &config_map, &observed.external_digests);
    desired.secrets = vec![credentials, connections];
    desired.secrets.extend(tls::secrets(&ctx));
    desired.config_maps = vec![config_map];

    for infra in Infra::ALL {
        if let Some(managed) = infra.managed(&cs.spec) {
            let (service, sts) = infra::objects(&ctx, infra, managed);
            desired.services.push(service);
            desired.stateful_sets.push(sts);
        }
    }

    desired.pvcs.extend(workloads::files_claim(&ctx));
    if let Some((claim, cron)) = backup::objects(&ctx) {
        desired.pvcs.push(claim);
        desired.cron_jobs.push(cron);
    }
    let job = workloads::migration_job(&ctx);
    desired.migration_job = job.name_any();
    desired.migration_state = observed.jobs.get(&desired.migration_job).copied();
    desired.jobs.push(job);
    let migrated = desired.migration_state == Some(JobState::Succeeded);

    for component in Component::ALL {
        desired.services.push(workloads::headless_service(&ctx, component));
        // The new image runs only once its migration succeeded; until then a Deployment keeps
        // its current image, and one that does not exist yet waits.
        let image = if migrated { Some(ctx.image.clone()) } else { observed.deployed_images.get(&component).cloned() };
        if image.as_deref() != Some(ctx.image.as_str()) {
            desired.held.push(component);
        }
        if let Some(image) = image {
            desired.deployments.push(workloads::deployment(&ctx, component, &image, &desired.config_hash));
        }
        desired.pdbs.extend(workloads::disruption_budget(&ctx, component));
        desired.hpas.extend(workloads::autoscaler(&ctx, component));
    }

    desired.services.push(gateway::public_service(&ctx));
    desired.ingresses.extend(gateway::ingress(&ctx));
    desired.network_policies = network::policies(&ctx);
    desired.pod_monitor = monitoring::pod_monitor(&ctx);
    desired
}

/// What every builder needs: names, labels, the owner reference.
struct Ctx<'a> {
    cs: &'a ChatSystem,
    spec: &'a ChatSystemSpec,
    name: String,
    namespace: Option<String>,
    image: String,
    internal_tls: bool,
    observed: &'a Observed,
}

impl<'a> Ctx<'a> {
    fn new(cs: &'a ChatSystem, observed: &'a Observed, defaults: &Defaults) -> Self {
        let image = &cs.spec.image;
        // Version policy: the spec's tag; else the tag the system runs (an operator upgrade
        // does not upgrade it); else, for a new system, the operator's default.
        let running = Component::ALL
            .iter()
            .find_map(|c| observed.deployed_images.get(c))
            .map(|image| crate::status::tag_of(image).to_string());
        let tag = image.tag.clone().or(running).unwrap_or_else(|| defaults.tag.clone());
        Self {
            cs,
            spec: &cs.spec,
            name: cs.name_any(),
            namespace: cs.namespace(),
            image: format!("{}:{}", image.repository, tag),
            internal_tls: cs.spec.internal_tls.mode != crate::crd::InternalTlsMode::Disabled,
            observed,
        }
    }

    /// `<name>-<suffix>`: the name of a child.
    fn child(&self, suffix: &str) -> String {
        format!("{}-{}", self.name, suffix)
    }

    /// Labels that select one component's pods (a Deployment's selector: never changes).
    fn selector(&self, component: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (LABEL_NAME.into(), "chatmesh".into()),
            (LABEL_INSTANCE.into(), self.name.clone()),
            (LABEL_COMPONENT.into(), component.into()),
        ])
    }

    /// Labels of every child: the selector labels plus the ones orphan cleanup lists by.
    fn labels(&self, component: &str) -> BTreeMap<String, String> {
        let mut labels = self.selector(component);
        labels.insert(LABEL_MANAGED_BY.into(), MANAGER.into());
        labels.insert(LABEL_PART_OF.into(), "chatmesh".into());
        labels
    }

    /// Metadata of a child: name, namespace, labels, and the controller owner reference (so
    /// deleting the ChatSystem garbage-collects it).
    fn meta(&self, name: String, component: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: self.namespace.clone(),
            labels: Some(self.labels(component)),
            // blockOwnerDeletion as controller-runtime sets it: a foreground deletion of the
            // ChatSystem waits for its children.
            owner_references: self
                .cs
                .controller_owner_ref(&())
                .map(|o| vec![OwnerReference { block_owner_deletion: Some(true), ..o }]),
            ..ObjectMeta::default()
        }
    }
}

impl Ctx<'_> {
    /// Metadata of a child that holds data (a volume claim, the credentials): owned by the
    /// ChatSystem only with `retention: Delete`, so by default it outlives the ChatSystem.
    fn data_meta(&self, name: String, component: &str) -> ObjectMeta {
        let mut meta = self.meta(name, component);
        if self.spec.retention == crate::crd::Retention::Retain {
            meta.owner_references = None;
        }
        meta
    }
}

/// Lowercase hex SHA-256, cut to `len` characters.
fn short_hash(bytes: &[u8], len: usize) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(bytes);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    hex[..len].to_string()
}

/// Hash of a desired object as it is applied (recorded on it, to skip unchanged applies).
pub fn hash_of<K: serde::Serialize>(obj: &K) -> String {
    short_hash(&serde_json::to_vec(obj).expect("a built object serialises"), 16)
}

/// The SHA-256 digest of a secret value, as recorded in `Observed::external_digests`.
pub fn digest(value: &[u8]) -> String {
    short_hash(value, 64)
}
