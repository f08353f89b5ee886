//! The chatmesh services: per service a Deployment and a headless Service; the schema
//! migration Job; the file service's volume claim.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec, MetricTarget,
    ResourceMetricSource,
};
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, HTTPGetAction, LocalObjectReference,
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, SeccompProfile, SecurityContext, Service, ServicePort, ServiceSpec,
    TopologySpreadConstraint, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::config::{self, FILES_DIR, TMP_DIR};
use super::{
    ADMIN_PORT, CONFIG_HASH_ANNOTATION, Component, Ctx, GATEWAY_HTTP_PORT, GATEWAY_WS_PORT, Infra, short_hash,
};
use crate::crd::AccessMode;

/// An unprivileged user id with no meaning in the image (the binary needs no home or files).
const UID: i64 = 65532;

/// How long a stopping pod serves on (`--shutdown-delay`). Its callers find its replacement at
/// their next DNS refresh (every 5 s) of an answer CoreDNS may have cached for its TTL (5 s);
/// 2 s more for the endpoint change to reach CoreDNS.
const SHUTDOWN_DELAY_SECONDS: i64 = 12;

/// `--shutdown-delay` of `component`'s pods. A replaced one (below) has no other pod to move
/// callers to, so no reason to wait.
pub(super) fn shutdown_delay(ctx: &Ctx, component: Component) -> String {
    format!("{}s", if replaced(ctx, component) { 0 } else { SHUTDOWN_DELAY_SECONDS })
}

/// A ReadWriteOnce volume attaches to one node: a rolling update's new pod could wait forever
/// for the old one's volume, so the file service is replaced instead.
fn replaced(ctx: &Ctx, component: Component) -> bool {
    component == Component::File
        && ctx.spec.files.existing_claim.is_none()
        && ctx.spec.files.access_mode == AccessMode::ReadWriteOnce
}
/// The delay, the services' drain (`--shutdown-grace`, 20 s) and a margin, before a SIGKILL.
const TERMINATION_GRACE_SECONDS: i64 = SHUTDOWN_DELAY_SECONDS + 20 + 8;

fn files_claim_name(ctx: &Ctx) -> String {
    ctx.spec.files.existing_claim.clone().unwrap_or_else(|| ctx.child("files"))
}

/// The files volume's claim, unless the spec names an existing one.
pub(super) fn files_claim(ctx: &Ctx) -> Option<PersistentVolumeClaim> {
    let files = &ctx.spec.files;
    if files.existing_claim.is_some() {
        return None;
    }
    Some(PersistentVolumeClaim {
        metadata: ctx.data_meta(files_claim_name(ctx), "file"),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec![files.access_mode.as_str().into()]),
            storage_class_name: files.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".into(),
                    Quantity(files.size.clone().unwrap_or_else(|| "10Gi".into())),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    })
}

fn port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::String(name.into())),
        ..ServicePort::default()
    }
}

/// (name, port) of the ports a service's container listens on.
fn ports(component: Component) -> Vec<(&'static str, i32)> {
    let mut ports = match component.grpc_port() {
        Some(grpc) => vec![("grpc", grpc)],
        None => vec![("http", GATEWAY_HTTP_PORT), ("ws", GATEWAY_WS_PORT)],
    };
    ports.push(("admin", ADMIN_PORT));
    ports
}

/// Headless: its DNS name resolves to every ready pod, and the callers balance over them.
pub(super) fn headless_service(ctx: &Ctx, component: Component) -> Service {
    Service {
        metadata: ctx.meta(ctx.child(component.name()), component.name()),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(ctx.selector(component.name())),
            ports: Some(
                ports(component)
                    .into_iter()
                    .map(|(name, p)| {
                        let mut port = port(name, p);
                        // A mesh's proxy must pass chatmesh's own TLS through untouched, not
                        // parse it as gRPC (Istio picks the protocol from this, else the name).
                        if name == "grpc" && ctx.internal_tls {
                            port.app_protocol = Some("tls".into());
                        }
                        port
                    })
                    .collect(),
            ),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("admin".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

fn restricted_container() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), add: None }),
        read_only_root_filesystem: Some(true),
        ..SecurityContext::default()
    }
}

fn restricted_pod() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(UID),
        run_as_group: Some(UID),
        // Makes the files volume writable by that user.
        fs_group: Some(UID),
        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..SeccompProfile::default() }),
        ..PodSecurityContext::default()
    }
}

fn tmp_volume() -> (Volume, VolumeMount) {
    (
        Volume { name: "tmp".into(), empty_dir: Some(EmptyDirVolumeSource::default()), ..Volume::default() },
        VolumeMount { name: "tmp".into(), mount_path: TMP_DIR.into(), ..VolumeMount::default() },
    )
}

fn pull_secrets(ctx: &Ctx) -> Option<Vec<LocalObjectReference>> {
    let secrets = &ctx.spec.image.pull_secrets;
    (!secrets.is_empty()).then(|| secrets.iter().map(|name| LocalObjectReference { name: name.clone() }).collect())
}

pub(super) fn deployment(ctx: &Ctx, component: Component, image: &str, config_hash: &str) -> Deployment {
    let spec = component.spec(ctx.spec);
    let name = component.name();
    let (tmp, tmp_mount) = tmp_volume();
    let mut volumes = vec![tmp];
    let mut mounts = vec![tmp_mount];
    if component == Component::File {
        volumes.push(Volume {
            name: "files".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: files_claim_name(ctx),
                read_only: None,
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount { name: "files".into(), mount_path: FILES_DIR.into(), ..VolumeMount::default() });
    }
    if let Some((volume, mount)) = super::tls::volume(ctx, component) {
        volumes.push(volume);
        mounts.push(mount);
    }
    let container = Container {
        name: "chatmesh".into(),
        image: Some(image.into()),
        image_pull_policy: Some(ctx.spec.image.pull_policy.as_str().into()),
        env: Some(config::env(ctx, name, Some(component))),
        env_from: Some(config::env_from(ctx)),
        ports: Some(
            ports(component)
                .into_iter()
                .map(|(name, port)| ContainerPort {
                    name: Some(name.into()),
                    container_port: port,
                    ..ContainerPort::default()
                })
                .collect(),
        ),
        liveness_probe: Some(http_probe("/healthz", 10, 3)),
        // Ready = can serve. A shared server's blip reaches every pod at once, so taking them
        // all out of their Service would only turn a partial outage into a whole one; the
        // backends' state stays on /readyz and in /metrics (chatmesh_backend_*).
        readiness_probe: Some(http_probe("/healthz", 5, 2)),
        // A new pod starts serving only once its required backends have answered (/readyz),
        // with up to 5 minutes to connect before it is restarted.
        startup_probe: Some(http_probe("/readyz", 2, 150)),
        resources: Some(spec.resources.clone().unwrap_or_else(|| super::resources::service(component))),
        security_context: Some(restricted_container()),
        volume_mounts: Some(mounts),
        ..Container::default()
    };
    // The spec's extras first, so the operator's own (the selector, the config hash) win.
    let mut pod_labels = spec.pod_labels.clone();
    pod_labels.extend(ctx.labels(name));
    let mut pod_annotations = spec.pod_annotations.clone();
    pod_annotations.insert(CONFIG_HASH_ANNOTATION.into(), config_hash.into());
    Deployment {
        metadata: ctx.meta(ctx.child(name), name),
        spec: Some(DeploymentSpec {
            // With autoscaling the HPA owns the count: applying one would fight it.
            replicas: spec.autoscaling.is_none().then_some(spec.replicas),
            selector: LabelSelector { match_labels: Some(ctx.selector(name)), ..LabelSelector::default() },
            strategy: replaced(ctx, component)
                .then(|| DeploymentStrategy { type_: Some("Recreate".into()), rolling_update: None }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(pod_annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes: Some(volumes),
                    image_pull_secrets: pull_secrets(ctx),
                    node_selector: (!spec.node_selector.is_empty()).then(|| spec.node_selector.clone()),
                    tolerations: (!spec.tolerations.is_empty()).then(|| spec.tolerations.clone()),
                    affinity: spec.affinity.clone(),
                    topology_spread_constraints: Some(
                        spec.topology_spread_constraints.clone().unwrap_or_else(|| default_spread(ctx, name)),
                    ),
                    security_context: Some(restricted_pod()),
                    termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
                    // Services talk to the API server never, so they get no token.
                    automount_service_account_token: Some(false),
                    // Service links would inject variables such as CHATMESH_USER_PORT for a
                    // Service named chatmesh-user, colliding with chatmesh's own flags.
                    enable_service_links: Some(false),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

/// Replicas spread over nodes and zones where possible (never a reason not to schedule).
fn default_spread(ctx: &Ctx, component: &str) -> Vec<TopologySpreadConstraint> {
    ["kubernetes.io/hostname", "topology.kubernetes.io/zone"]
        .into_iter()
        .map(|key| TopologySpreadConstraint {
            max_skew: 1,
            topology_key: key.into(),
            when_unsatisfiable: "ScheduleAnyway".into(),
            label_selector: Some(LabelSelector {
                match_labels: Some(ctx.selector(component)),
                ..LabelSelector::default()
            }),
            ..TopologySpreadConstraint::default()
        })
        .collect()
}

/// A drain evicts one pod of the service at a time, waiting for its replacement to be ready.
/// None for a single replica: a budget there would block every drain of its node.
pub(super) fn disruption_budget(ctx: &Ctx, component: Component) -> Option<PodDisruptionBudget> {
    let spec = component.spec(ctx.spec);
    let replicas = spec.autoscaling.as_ref().map_or(spec.replicas, |a| a.max_replicas);
    if replicas <= 1 {
        return None;
    }
    let name = component.name();
    Some(PodDisruptionBudget {
        metadata: ctx.meta(ctx.child(name), name),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector { match_labels: Some(ctx.selector(name)), ..LabelSelector::default() }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    })
}

/// The service's HorizontalPodAutoscaler (on CPU), with `autoscaling`.
pub(super) fn autoscaler(ctx: &Ctx, component: Component) -> Option<HorizontalPodAutoscaler> {
    let scaling = component.spec(ctx.spec).autoscaling.as_ref()?;
    let name = component.name();
    Some(HorizontalPodAutoscaler {
        metadata: ctx.meta(ctx.child(name), name),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: ctx.child(name),
            },
            min_replicas: Some(scaling.min_replicas),
            max_replicas: scaling.max_replicas,
            metrics: Some(vec![MetricSpec {
                type_: "Resource".into(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".into(),
                    target: MetricTarget {
                        type_: "Utilization".into(),
                        average_utilization: Some(scaling.target_cpu_utilization),
                        ..MetricTarget::default()
                    },
                }),
                ..MetricSpec::default()
            }]),
            ..HorizontalPodAutoscalerSpec::default()
        }),
        ..HorizontalPodAutoscaler::default()
    })
}

/// How long the migration Job's first step waits for a managed database before its pod fails
/// (the Job then retries with backoff).
const DATABASE_WAIT_SECONDS: u32 = 600;

/// With a managed MariaDB, the migration Job first waits until its Service accepts connections
/// (on a first install it is still starting), logging each wait, instead of failing pods.
/// Bash's /dev/tcp: the chatmesh image carries bash and coreutils, no network tools.
fn wait_for_database(ctx: &Ctx) -> Option<Container> {
    Infra::Mysql.managed(ctx.spec)?;
    let script = r#"host=$1 port=$2 deadline=$((SECONDS + $3))
until timeout 5 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$host" "$port" 2>/dev/null; do
  if ((SECONDS >= deadline)); then echo "the database $host:$port did not accept connections within $3 s"; exit 1; fi
  echo "waiting for the database $host:$port to accept connections"
  sleep 2
done
echo "the database $host:$port accepts connections""#;
    Some(Container {
        name: "wait-for-database".into(),
        image: Some(ctx.image.clone()),
        image_pull_policy: Some(ctx.spec.image.pull_policy.as_str().into()),
        command: Some(vec!["bash".into(), "-c".into(), script.into(), "wait-for-database".into()]),
        args: Some(vec![ctx.child(Infra::Mysql.name()), "3306".into(), DATABASE_WAIT_SECONDS.to_string()]),
        // The migration's own resources: a namespace quota admits the pod with both.
        resources: Some(ctx.spec.migration.resources.clone().unwrap_or_else(super::resources::migration)),
        security_context: Some(restricted_container()),
        ..Container::default()
    })
}

/// `chatmesh --target migrate` for the desired image. A Job's pod template is immutable, so
/// its name carries a hash of the template: a new image (or database) makes a new Job.
pub(super) fn migration_job(ctx: &Ctx) -> Job {
    let (tmp, tmp_mount) = tmp_volume();
    let container = Container {
        name: "migrate".into(),
        image: Some(ctx.image.clone()),
        image_pull_policy: Some(ctx.spec.image.pull_policy.as_str().into()),
        env: Some(config::env(ctx, "migrate", None)),
        env_from: Some(config::env_from(ctx)),
        // A namespace with a ResourceQuota refuses a pod without requests and limits.
        resources: Some(ctx.spec.migration.resources.clone().unwrap_or_else(super::resources::migration)),
        security_context: Some(restricted_container()),
        volume_mounts: Some(vec![tmp_mount]),
        ..Container::default()
    };
    let pod = PodSpec {
        init_containers: wait_for_database(ctx).map(|c| vec![c]),
        containers: vec![container],
        volumes: Some(vec![tmp]),
        restart_policy: Some("Never".into()),
        image_pull_secrets: pull_secrets(ctx),
        security_context: Some(restricted_pod()),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        ..PodSpec::default()
    };
    let hash = short_hash(serde_json::to_string(&pod).expect("a pod spec serialises").as_bytes(), 10);
    Job {
        metadata: ctx.meta(ctx.child(&format!("migrate-{hash}")), "migrate"),
        spec: Some(JobSpec {
            // The database may still be starting on a first install: retry with backoff.
            backoff_limit: Some(10),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(ctx.labels("migrate")), ..ObjectMeta::default() }),
                spec: Some(pod),
            },
            ..JobSpec::default()
        }),
        ..Job::default()
    }
}
