//! The `ChatSystem` custom resource (`chatmesh.io/v1alpha1`): its spec, its status, and the schema
//! rules that make the API server refuse a bad spec before the operator ever sees it.
//!
//! Fields that later code reads with a fallback are `Option`s without a schema default, because
//! a schema default is filled in by the API server before CEL rules run (e.g. a defaulted
//! `files.size` would make "existingClaim excludes size" impossible to satisfy).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, EnvVar, ResourceRequirements, Toleration, TopologySpreadConstraint};
use k8s_openapi::api::networking::v1::NetworkPolicyPeer;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Container image of the chatmesh binary used by default (the tag defaults to the operator's
/// own version, so an operator upgrade rolls the system it manages forward with it).
pub const DEFAULT_REPOSITORY: &str = "ghcr.io/chatmesh/chatmesh";

/// A managed server's volume size and class are those of its StatefulSet's volume claim
/// template, which the API server never lets change: an edit would stop every later pass at
/// that StatefulSet. So the schema refuses it while the server stays managed (an absent
/// dependency is a managed one with the defaults). Switching it to external and back is allowed
/// (the StatefulSet is then made anew; its old claim, kept, is reused as it is).
fn storage_unchanged(server: &str) -> String {
    // has() chains rather than CEL optionals: the cost estimator keeps the fields' maxLength
    // through these, not through optionals.
    let field = |root: &str, f: &str| {
        let path = format!("{root}.{server}.managed.storage");
        format!(
            "(has({root}.{server}) && has({root}.{server}.managed) && has({path}) && has({path}.{f}) ? {path}.{f} : '')"
        )
    };
    let managed = |root: &str| format!("(!has({root}.{server}) || has({root}.{server}.managed))");
    format!(
        "!({old} && {new}) || ({} == {} && {} == {})",
        field("self", "size"),
        field("oldSelf", "size"),
        field("self", "storageClassName"),
        field("oldSelf", "storageClassName"),
        old = managed("oldSelf"),
        new = managed("self"),
    )
}

fn storage_message(server: &str) -> String {
    format!(
        "{server}.managed.storage.size and storageClassName cannot be changed: the StatefulSet's volume claim template is immutable. To grow the volume, resize the claim data-<name>-{server}-0 itself where its storage class allows expansion (kubectl patch pvc)"
    )
}

/// The files claim the operator makes: its class and access mode are immutable, its size may
/// only grow (the claim is then expanded, where its storage class allows it).
const FILES_UNCHANGED: &str = "!has(self.files) || !has(oldSelf.files) || has(self.files.existingClaim) || has(oldSelf.files.existingClaim) || ((has(self.files.storageClassName) ? self.files.storageClassName : '') == (has(oldSelf.files.storageClassName) ? oldSelf.files.storageClassName : '') && self.files.accessMode == oldSelf.files.accessMode && quantity(has(self.files.size) ? self.files.size : '10Gi').compareTo(quantity(has(oldSelf.files.size) ? oldSelf.files.size : '10Gi')) >= 0)";

const FILES_MESSAGE: &str = "files.storageClassName and files.accessMode cannot be changed and files.size cannot shrink: the claim's class and access modes are immutable (make a new claim, copy the files, and set files.existingClaim)";

/// Desired state of one chatmesh installation.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "chatmesh.io",
    version = "v1alpha1",
    kind = "ChatSystem",
    namespaced,
    shortname = "chat",
    category = "chatmesh",
    status = "ChatSystemStatus",
    derive = "PartialEq",
    doc = "A whole chatmesh instant-messaging system: its services, their dependencies and how the gateway is exposed.",
    printcolumn(name = "Ready", type_ = "string", json_path = r#".status.conditions[?(@.type=="Ready")].status"#),
    printcolumn(name = "Gateway", type_ = "string", json_path = ".status.gatewayEndpoint"),
    printcolumn(name = "Version", type_ = "string", json_path = ".status.version"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.size() <= 32").message(
        "metadata.name must be at most 32 characters: child names append suffixes such as -elasticsearch"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(storage_unchanged("mysql")).message(Message::Message(storage_message("mysql"))))]
#[x_kube(validation = Rule::new(storage_unchanged("redis")).message(Message::Message(storage_message("redis"))))]
#[x_kube(validation = Rule::new(storage_unchanged("rabbitmq")).message(Message::Message(storage_message("rabbitmq"))))]
#[x_kube(validation = Rule::new(storage_unchanged("elasticsearch")).message(Message::Message(storage_message("elasticsearch"))))]
#[x_kube(validation = Rule::new(FILES_UNCHANGED).message(FILES_MESSAGE))]
pub struct ChatSystemSpec {
    /// Stop reconciling: the operator changes nothing until this is false again.
    #[serde(default)]
    pub paused: bool,
    /// The chatmesh container image (one image serves every service).
    #[serde(default)]
    pub image: ImageSpec,
    /// Per-service workload settings.
    #[serde(default)]
    pub services: ServicesSpec,
    /// How the gateway (HTTP API and notification WebSocket) is exposed.
    #[serde(default)]
    pub gateway: GatewaySpec,
    /// Speech recognition provider.
    #[serde(default)]
    pub speech: SpeechSpec,
    /// SMS provider for verification codes.
    #[serde(default)]
    pub sms: SmsSpec,
    /// Relational database (MariaDB/MySQL).
    #[serde(default)]
    pub mysql: Dependency,
    /// Sessions, verification codes, presence and rate limits.
    #[serde(default)]
    pub redis: Dependency,
    /// Message queue between transmit and message storage.
    #[serde(default)]
    pub rabbitmq: Dependency,
    /// Message and user search (Elasticsearch 7.10+ or OpenSearch).
    #[serde(default)]
    pub elasticsearch: Dependency,
    /// Volume holding uploaded files (mounted by the file service).
    #[serde(default)]
    pub files: FilesSpec,
    /// The schema migration Job.
    #[serde(default)]
    pub migration: MigrationSpec,
    /// Scheduled logical backups of the managed MariaDB (`mariadb-dump` into a claim of their
    /// own, `<name>-backups`); off when unset, `{}` for the defaults. Nothing with an external
    /// database: back that up where it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupSpec>,
    /// What deleting the ChatSystem does to its data: `Retain` (default) keeps the servers' and
    /// the files' volume claims and the credentials Secret (the servers' data only accepts
    /// those passwords), and a ChatSystem re-created with the same name adopts them; `Delete`
    /// deletes them with it.
    #[serde(default)]
    pub retention: Retention,
    /// Mutual TLS between the services: who issues each service's certificate.
    #[serde(default)]
    pub internal_tls: InternalTlsSpec,
    /// The NetworkPolicies that limit who reaches each port.
    #[serde(default)]
    pub network_policy: NetworkPolicySpec,
    /// Distributed traces of every service.
    #[serde(default, skip_serializing_if = "ObservabilitySpec::is_default")]
    pub observability: ObservabilitySpec,
}

/// Where every service sends its spans (OpenTelemetry, OTLP over gRPC).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ObservabilitySpec {
    /// The collector's OTLP/gRPC endpoint, e.g. `http://otel-collector.monitoring:4317`;
    /// unset: no traces (spec.networkPolicy leaves egress open).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://[^\s/]+(:[0-9]+)?/?$"))]
    pub otlp_endpoint: Option<String>,
    /// Share of new traces recorded, 0 to 1 [default: 1].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub trace_sample_ratio: Option<f64>,
    /// A Prometheus Operator PodMonitor for the services' admin ports (`/metrics`), made when
    /// the cluster serves the PodMonitor kind (monitoring.coreos.com/v1).
    #[serde(default, skip_serializing_if = "PodMonitorSpec::is_default")]
    pub pod_monitor: PodMonitorSpec,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodMonitorSpec {
    /// Make one where the kind exists [default: true].
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Extra labels on the PodMonitor (e.g. the `release` label a Prometheus selects by).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Scrape interval, e.g. `30s` [default: Prometheus's].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h)$"))]
    pub interval: Option<String>,
}

impl Default for PodMonitorSpec {
    fn default() -> Self {
        Self { enabled: true, labels: BTreeMap::new(), interval: None }
    }
}

impl PodMonitorSpec {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

impl ObservabilitySpec {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ImageSpec {
    /// Image repository, without tag.
    #[serde(default = "default_repository")]
    #[schemars(regex(pattern = r"^[a-z0-9]+([._:/-][a-z0-9]+)*$"))]
    pub repository: String,
    /// Image tag [default: the operator's version].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"))]
    pub tag: Option<String>,
    #[serde(default)]
    pub pull_policy: PullPolicy,
    /// Names of Secrets (type dockerconfigjson) used to pull the image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pull_secrets: Vec<String>,
}

impl Default for ImageSpec {
    fn default() -> Self {
        Self { repository: default_repository(), tag: None, pull_policy: PullPolicy::default(), pull_secrets: vec![] }
    }
}

fn default_repository() -> String {
    DEFAULT_REPOSITORY.into()
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    #[default]
    IfNotPresent,
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::IfNotPresent => "IfNotPresent",
            Self::Never => "Never",
        }
    }
}

/// One entry per chatmesh service; each runs as its own Deployment.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServicesSpec {
    #[serde(default)]
    pub gateway: ComponentSpec,
    #[serde(default)]
    pub user: ComponentSpec,
    #[serde(default)]
    pub friend: ComponentSpec,
    #[serde(default)]
    pub file: ComponentSpec,
    #[serde(default)]
    pub message: ComponentSpec,
    #[serde(default)]
    pub transmit: ComponentSpec,
    #[serde(default)]
    pub speech: ComponentSpec,
}

/// Workload settings of one service.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.podLabels) || ['app.kubernetes.io/name', 'app.kubernetes.io/instance', 'app.kubernetes.io/component', 'app.kubernetes.io/managed-by', 'app.kubernetes.io/part-of'].all(k, !(k in self.podLabels))")
    .message("podLabels cannot set the operator's app.kubernetes.io/{name,instance,component,managed-by,part-of} labels"))]
#[x_kube(validation = Rule::new("!has(self.podAnnotations) || !('chatmesh.io/config-hash' in self.podAnnotations)")
    .message("podAnnotations cannot set chatmesh.io/config-hash (the operator's)"))]
pub struct ComponentSpec {
    /// Pods of the service; ignored with `autoscaling`.
    #[serde(default = "one")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: i32,
    /// A HorizontalPodAutoscaler sizes the service instead of `replicas` (the operator then
    /// leaves the Deployment's replica count to it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,
    /// Compute resources of the service's container (core/v1 ResourceRequirements); replaces
    /// the default as a whole [default: requests 50m CPU and 64Mi, limits 500m and 256Mi;
    /// gateway 100m/128Mi, 1/512Mi; speech 100m/128Mi, 1/1Gi].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "terse::<Option<ResourceRequirements>>")]
    pub resources: Option<ResourceRequirements>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// core/v1 Tolerations of the pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "terse::<Vec<Toleration>>")]
    pub tolerations: Vec<Toleration>,
    /// core/v1 Affinity of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "terse::<Option<Affinity>>")]
    pub affinity: Option<Affinity>,
    /// core/v1 TopologySpreadConstraints of the pods [default: spread over nodes and zones,
    /// maxSkew 1, ScheduleAnyway]; `[]`: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "terse::<Option<Vec<TopologySpreadConstraint>>>")]
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,
    /// Extra environment variables (core/v1 EnvVar); one with the name of an operator-set
    /// variable replaces it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "terse::<Vec<EnvVar>>")]
    pub env: Vec<EnvVar>,
    /// Extra annotations of the pods, e.g. `linkerd.io/inject: enabled` to add a mesh's proxy.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "annotations_schema")]
    pub pod_annotations: BTreeMap<String, String>,
    /// Extra labels of the pods, e.g. `sidecar.istio.io/inject: "true"`. The operator's own
    /// `app.kubernetes.io/*` labels select the pods and cannot be set here.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "labels_schema")]
    pub pod_labels: BTreeMap<String, String>,
}

impl Default for ComponentSpec {
    fn default() -> Self {
        Self {
            replicas: one(),
            autoscaling: None,
            resources: None,
            node_selector: BTreeMap::new(),
            tolerations: vec![],
            affinity: None,
            topology_spread_constraints: None,
            env: vec![],
            pod_annotations: BTreeMap::new(),
            pod_labels: BTreeMap::new(),
        }
    }
}

fn one() -> i32 {
    1
}

/// Scaling on CPU use (the HPA compares usage with the container's CPU request).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message("minReplicas must not exceed maxReplicas"))]
pub struct AutoscalingSpec {
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 100))]
    pub min_replicas: i32,
    #[schemars(range(min = 1, max = 100))]
    pub max_replicas: i32,
    /// Average CPU use, in percent of the request, to scale at [default: 75].
    #[serde(default = "seventy_five")]
    #[schemars(range(min = 10, max = 100))]
    pub target_cpu_utilization: i32,
}

fn seventy_five() -> i32 {
    75
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    #[serde(default)]
    pub service: GatewayServiceSpec,
    /// An Ingress for the HTTP port (the WebSocket is served there too, at `/ws`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressSpec>,
}

/// The gateway's client-facing Service.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.type != 'ClusterIP' || (!has(self.httpNodePort) && !has(self.websocketNodePort))")
    .message("httpNodePort and websocketNodePort need type NodePort or LoadBalancer"))]
pub struct GatewayServiceSpec {
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    #[serde(default = "http_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub http_port: i32,
    #[serde(default = "ws_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub websocket_port: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 30000, max = 32767))]
    pub http_node_port: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 30000, max = 32767))]
    pub websocket_node_port: Option<i32>,
    /// Annotations of the Service (e.g. for a cloud load balancer).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Default for GatewayServiceSpec {
    fn default() -> Self {
        Self {
            type_: ServiceType::default(),
            http_port: http_port(),
            websocket_port: ws_port(),
            http_node_port: None,
            websocket_node_port: None,
            annotations: BTreeMap::new(),
        }
    }
}

fn http_port() -> i32 {
    9000
}
fn ws_port() -> i32 {
    9001
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClusterIP => "ClusterIP",
            Self::NodePort => "NodePort",
            Self::LoadBalancer => "LoadBalancer",
        }
    }
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IngressSpec {
    /// Host name clients use, e.g. chat.example.com.
    #[schemars(regex(pattern = r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"))]
    #[schemars(length(max = 253))]
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    /// Secret (type kubernetes.io/tls) with the certificate for `host`; no TLS when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_secret_name: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Speech recognition. Credentials come from a Secret: keys `apiKey` and `secretKey` for
/// baidu, `apiKey` for openai.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.provider == 'offline' || has(self.credentialsSecret)")
    .message("speech providers baidu and openai need credentialsSecret"))]
pub struct SpeechSpec {
    #[serde(default)]
    pub provider: SpeechProvider,
    /// Base URL of the provider's API (openai: any OpenAI-compatible server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://"))]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SpeechProvider {
    #[default]
    Offline,
    Baidu,
    Openai,
}

impl SpeechProvider {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Offline => "offline",
            Self::Baidu => "baidu",
            Self::Openai => "openai",
        }
    }
}

/// SMS for verification codes. `log` writes codes to the user service's log: for development
/// only. Aliyun credentials come from a Secret with keys `accessKeyId` and `accessKeySecret`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.provider != 'aliyun' || (has(self.credentialsSecret) && has(self.signName) && has(self.templateCode))")
    .message("the aliyun SMS provider needs credentialsSecret, signName and templateCode"))]
pub struct SmsSpec {
    #[serde(default)]
    pub provider: SmsProvider,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub sign_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^SMS_[0-9]+$"))]
    pub template_code: Option<String>,
    /// Aliyun API endpoint [default: the service's public endpoint].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://"))]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SmsProvider {
    Aliyun,
    #[default]
    Log,
}

impl SmsProvider {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Aliyun => "aliyun",
            Self::Log => "log",
        }
    }
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Retention {
    #[default]
    Retain,
    Delete,
}

impl Retention {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Retain => "Retain",
            Self::Delete => "Delete",
        }
    }
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackupSpec {
    /// When to dump, in cron syntax, in the cluster's time zone [default: 03:00 daily].
    #[serde(default = "daily")]
    #[schemars(length(min = 9, max = 100))]
    pub schedule: String,
    /// Dumps kept (older ones are deleted after each run) [default: 7].
    #[serde(default = "seven")]
    #[schemars(range(min = 1, max = 1000))]
    pub keep: u32,
    /// Size of the backups claim [default: 20Gi].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"), length(max = 32))]
    pub size: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub storage_class_name: Option<String>,
    /// Compute resources of the dump's container [default: as the migration Job's].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "terse::<Option<ResourceRequirements>>")]
    pub resources: Option<ResourceRequirements>,
}

fn daily() -> String {
    "0 3 * * *".into()
}

fn seven() -> u32 {
    7
}

/// The schema migration Job run before every new image.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MigrationSpec {
    /// Compute resources of its container (core/v1 ResourceRequirements) [default: requests
    /// 50m CPU and 64Mi, limits 500m and 256Mi].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "terse::<Option<ResourceRequirements>>")]
    pub resources: Option<ResourceRequirements>,
}

/// A backing server: run by the operator (`managed`) or reached at a URL kept in a Secret
/// (`external`). Exactly one of the two.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.managed) != has(self.external)").message("set exactly one of managed or external"))]
pub struct Dependency {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<ManagedSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalSpec>,
}

impl Default for Dependency {
    fn default() -> Self {
        Self { managed: Some(ManagedSpec::default()), external: None }
    }
}

/// A single-replica StatefulSet run by the operator.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ManagedSpec {
    /// Server image [default: mariadb:11.4, redis:7.4, rabbitmq:4.1, elasticsearch:7.17.25].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,
    #[serde(default)]
    pub storage: StorageSpec,
    /// Compute resources of the server's container (core/v1 ResourceRequirements); replaces
    /// the default as a whole [default requests/limits: MySQL 250m/512Mi, 1/1Gi; Redis
    /// 50m/64Mi, 500m/256Mi; RabbitMQ 100m/256Mi, 1/512Mi; Elasticsearch 250m/2Gi, 1/2Gi].
    /// Elasticsearch's heap is half its memory limit (or request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "terse::<Option<ResourceRequirements>>")]
    pub resources: Option<ResourceRequirements>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Volume size [default: 8Gi for MySQL and Elasticsearch, 1Gi for Redis, 2Gi for RabbitMQ].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"), length(max = 32))]
    pub size: Option<String>,
    /// StorageClass of the volume [default: the cluster's default class].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub storage_class_name: Option<String>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExternalSpec {
    /// Where the connection URL is (e.g. `mysql://user:pass@host:3306/db`).
    pub url_secret: SecretKeyRef,
}

/// One key of a Secret in the ChatSystem's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[serde(default = "url_key")]
    #[schemars(regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

fn url_key() -> String {
    "url".into()
}

/// The file service's volume: a claim the operator makes, or an existing one.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.existingClaim) || (!has(self.size) && !has(self.storageClassName))")
    .message("existingClaim cannot be combined with size or storageClassName"))]
pub struct FilesSpec {
    /// Size of the claim the operator makes [default: 10Gi].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"), length(max = 32))]
    pub size: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub storage_class_name: Option<String>,
    /// ReadWriteMany lets file-service pods on different nodes share the volume; with
    /// ReadWriteOnce the file service is replaced, not rolled, on updates.
    #[serde(default)]
    pub access_mode: AccessMode,
    /// Use this PersistentVolumeClaim instead of making one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub existing_claim: Option<String>,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AccessMode {
    #[default]
    ReadWriteOnce,
    ReadWriteMany,
}

impl AccessMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ReadWriteOnce => "ReadWriteOnce",
            Self::ReadWriteMany => "ReadWriteMany",
        }
    }
}

/// Mutual TLS on every internal gRPC connection. Each service presents a certificate whose URI
/// SAN is `spiffe://chatmesh.io/service/<service>` and whose DNS SANs are its headless
/// Service's names; servers accept only peers whose certificate chains to a CA in `ca.crt`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.mode == 'secret' ? has(self.secret) : !has(self.secret)")
    .message("secret is required with mode secret and allowed only then"))]
#[x_kube(validation = Rule::new("self.mode == 'operator' || !has(self.certificateLifetime)")
    .message("certificateLifetime applies only to mode operator"))]
pub struct InternalTlsSpec {
    /// `operator` (default): a CA per ChatSystem and a certificate per service, made and renewed
    /// by the operator. `secret`: certificates you provide. `disabled`: plaintext; only for a
    /// service mesh that provides mutual TLS between the pods itself.
    #[serde(default)]
    pub mode: InternalTlsMode,
    /// Mode operator: validity of each service certificate, renewed when a third of it is left:
    /// a number and a unit s, m, h or d, 10s to 3650d (under an hour only for tests) [default: 90d].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[1-9][0-9]{0,7}(s|m|h|d)$"))]
    pub certificate_lifetime: Option<String>,
    /// Mode secret: where the certificates are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<InternalTlsSecrets>,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum InternalTlsMode {
    #[default]
    Operator,
    Secret,
    Disabled,
}

impl InternalTlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Operator => "operator",
            Self::Secret => "secret",
            Self::Disabled => "disabled",
        }
    }
}

/// Certificates you provide (PEM), in exactly one of two shapes. `name`: one Secret with
/// `ca.crt` (one or more CA certificates) and, per service, `<service>.crt` and `<service>.key`
/// (e.g. `gateway.crt`, `gateway.key`). `services`: one Secret per service with `ca.crt`,
/// `tls.crt` and `tls.key` (a kubernetes.io/tls Secret plus `ca.crt`, as cert-manager writes).
/// The files are re-read when a Secret changes: renewing them needs no restart.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.name) != has(self.services)").message("set exactly one of name or services"))]
pub struct InternalTlsSecrets {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<ServiceSecrets>,
}

/// The Secret of each service.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSecrets {
    #[schemars(length(min = 1, max = 253))]
    pub gateway: String,
    #[schemars(length(min = 1, max = 253))]
    pub user: String,
    #[schemars(length(min = 1, max = 253))]
    pub friend: String,
    #[schemars(length(min = 1, max = 253))]
    pub file: String,
    #[schemars(length(min = 1, max = 253))]
    pub message: String,
    #[schemars(length(min = 1, max = 253))]
    pub transmit: String,
    #[schemars(length(min = 1, max = 253))]
    pub speech: String,
}

/// NetworkPolicies (enforced only where the cluster's network plugin supports them):
/// ingress to every pod of the ChatSystem is denied except the gateway's public ports, each
/// service's gRPC port from the services that call it, each managed server's port from the
/// services that use it (and the migration Job), and the admin port (9100: `/metrics`) from
/// `metricsFrom`. Egress is not limited: the services need DNS and reach external
/// dependencies (SMS, speech APIs, external servers) whose addresses the operator cannot know.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Who may reach the gateway's HTTP and WebSocket ports (core/v1 NetworkPolicyPeer, e.g.
    /// the ingress controller's namespace); empty: anyone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "terse::<Vec<NetworkPolicyPeer>>")]
    pub gateway_from: Vec<NetworkPolicyPeer>,
    /// Namespaces (a label selector) from which the admin port 9100 (`/metrics`) of every
    /// service is reachable, for Prometheus [default: the namespace named `monitoring`,
    /// `{matchLabels: {kubernetes.io/metadata.name: monitoring}}`]; `{}`: every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "terse::<Option<LabelSelector>>")]
    pub metrics_from: Option<LabelSelector>,
}

impl Default for NetworkPolicySpec {
    fn default() -> Self {
        Self { enabled: true, gateway_from: vec![], metrics_from: None }
    }
}

fn yes() -> bool {
    true
}

/// Observed state, written by the operator only.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ChatSystemStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing` and `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// Ready and desired replicas of every service and managed server.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub components: BTreeMap<String, ComponentStatus>,
    /// Where clients connect: the ingress host, or the gateway Service's address and HTTP port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_endpoint: Option<String>,
    /// Image tag the services run now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The schema migration for the desired image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<MigrationStatus>,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ComponentStatus {
    pub ready_replicas: i32,
    pub replicas: i32,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MigrationStatus {
    pub job: String,
    pub image: String,
    pub state: MigrationState,
    /// Failed runs of this migration so far; each is retried after a growing delay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failures: Option<u32>,
    /// The end of the last failed run's log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<String>,
    /// When the failed Job is run again (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_retry: Option<String>,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MigrationState {
    #[default]
    Running,
    Succeeded,
    Failed,
}

/// A label or annotation key as Kubernetes takes it: an optional DNS-subdomain prefix and `/`,
/// then a name of at most 63 characters (no backslash: it goes into a CEL string).
const KEY_RULE: &str = "self.all(k, size(k) <= 317 && k.matches('^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$'))";

/// Pod labels: keys and values checked as the API server would check them on the pods, so a
/// bad one is refused with the ChatSystem instead of failing a Deployment mid-pass.
fn labels_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "maxProperties": 64,
        "additionalProperties": {"type": "string", "maxLength": 63, "pattern": "^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"},
        "x-kubernetes-validations": [{"rule": KEY_RULE, "message": "label keys must be [prefix/]name: a DNS subdomain and up to 63 letters, digits, '-', '_' or '.'"}],
    })
}

/// Pod annotations: keys checked as for labels; values are free text (64 KiB each).
fn annotations_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "maxProperties": 64,
        "additionalProperties": {"type": "string", "maxLength": 65536},
        "x-kubernetes-validations": [{"rule": KEY_RULE, "message": "annotation keys must be [prefix/]name: a DNS subdomain and up to 63 letters, digits, '-', '_' or '.'"}],
    })
}

/// The schema of an embedded Kubernetes type without its (long) field descriptions: the
/// structure and validation stay, but seven copies of Affinity's documentation would make the
/// CRD too big for a client-side `kubectl apply` (its annotation limit is 256 KiB).
fn terse<T: schemars::JsonSchema>(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    fn strip(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                map.remove("description");
                for (key, child) in map.iter_mut() {
                    if key == "properties" {
                        // Keys here are field names (one may be called "description").
                        if let serde_json::Value::Object(fields) = child {
                            fields.values_mut().for_each(strip);
                        }
                    } else {
                        strip(child);
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut value = generator.subschema_for::<T>().to_value();
    strip(&mut value);
    schemars::Schema::try_from(value).expect("a schema stays a schema")
}

/// The CRD as YAML, exactly as committed under `crds/`.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    let crd = ChatSystem::crd();
    let yaml = serde_saphyr::to_string(&crd).expect("a CRD always serialises");
    format!("# Generated by `cargo run -p chatmesh-operator --bin crdgen`; do not edit.\n---\n{yaml}")
}
