//! Managed servers: one single-replica StatefulSet with a volume claim template and one headless
//! Service (its stable DNS name) per managed dependency.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, HTTPGetAction, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile, SecurityContext, Service, ServicePort,
    ServiceSpec, TCPSocketAction, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::config::{DB_NAME, DB_USER, credentials_secret_name};
use super::{Ctx, Infra};
use crate::crd::ManagedSpec;

/// How to run each server: image, port, data directory, default volume size, user id.
struct Server {
    image: &'static str,
    port: i32,
    port_name: &'static str,
    data_dir: &'static str,
    size: &'static str,
    /// The image's own unprivileged user (its files belong to it).
    uid: i64,
    /// Whether the image writes only to its data volume.
    read_only_root: bool,
}

fn server(infra: Infra) -> Server {
    match infra {
        Infra::Mysql => Server {
            image: "docker.io/library/mariadb:11.4",
            port: Infra::Mysql.port(),
            port_name: "mysql",
            data_dir: "/var/lib/mysql",
            size: "8Gi",
            uid: 999,
            read_only_root: false,
        },
        Infra::Redis => Server {
            image: "docker.io/library/redis:7.4",
            port: Infra::Redis.port(),
            port_name: "redis",
            data_dir: "/data",
            size: "1Gi",
            uid: 999,
            read_only_root: true,
        },
        Infra::Rabbitmq => Server {
            image: "docker.io/library/rabbitmq:4.1",
            port: Infra::Rabbitmq.port(),
            port_name: "amqp",
            data_dir: "/var/lib/rabbitmq",
            size: "2Gi",
            uid: 999,
            read_only_root: false,
        },
        Infra::Elasticsearch => Server {
            image: "docker.io/library/elasticsearch:7.17.25",
            port: Infra::Elasticsearch.port(),
            port_name: "http",
            data_dir: "/usr/share/elasticsearch/data",
            size: "8Gi",
            uid: 1000,
            read_only_root: false,
        },
    }
}

/// The image a managed server runs when the spec names none.
pub(super) fn default_image(infra: Infra) -> &'static str {
    server(infra).image
}

fn value(name: &str, value: &str) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value.into()), ..EnvVar::default() }
}

fn from_secret(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(k8s_openapi::api::core::v1::EnvVarSource {
            secret_key_ref: Some(k8s_openapi::api::core::v1::SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: None,
            }),
            ..Default::default()
        }),
        ..EnvVar::default()
    }
}

pub(super) fn objects(ctx: &Ctx, infra: Infra, managed: &ManagedSpec) -> (Service, StatefulSet) {
    let s = server(infra);
    let name = ctx.child(infra.name());
    let component = infra.name();
    let creds = credentials_secret_name(ctx);

    let service = Service {
        metadata: ctx.meta(name.clone(), component),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(ctx.selector(component)),
            ports: Some(vec![ServicePort {
                name: Some(s.port_name.into()),
                port: s.port,
                target_port: Some(IntOrString::String(s.port_name.into())),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };

    let resources = managed.resources.clone().unwrap_or_else(|| super::resources::server(infra));
    let (env, args) = match infra {
        Infra::Mysql => (
            vec![
                from_secret("MARIADB_ROOT_PASSWORD", &creds, "mysql-root-password"),
                value("MARIADB_DATABASE", DB_NAME),
                value("MARIADB_USER", DB_USER),
                from_secret("MARIADB_PASSWORD", &creds, "mysql-password"),
            ],
            vec!["--character-set-server=utf8mb4".into(), "--collation-server=utf8mb4_unicode_ci".into()],
        ),
        Infra::Redis => (
            vec![from_secret("REDIS_PASSWORD", &creds, "redis-password")],
            // $(VAR) is expanded by the kubelet, so the password never sits in the pod spec.
            ["redis-server", "--requirepass", "$(REDIS_PASSWORD)", "--appendonly", "yes", "--dir", "/data"]
                .map(String::from)
                .to_vec(),
        ),
        Infra::Rabbitmq => (
            vec![
                value("RABBITMQ_DEFAULT_USER", DB_USER),
                from_secret("RABBITMQ_DEFAULT_PASS", &creds, "rabbitmq-password"),
            ],
            vec![],
        ),
        Infra::Elasticsearch => (
            vec![
                // One node: no cluster formation and no production bootstrap checks.
                value("discovery.type", "single-node"),
                value("xpack.security.enabled", "false"),
                // Half the memory limit: the rest is the file cache Lucene lives on.
                value("ES_JAVA_OPTS", &{
                    let heap = super::resources::elasticsearch_heap_mib(&resources);
                    format!("-Xms{heap}m -Xmx{heap}m")
                }),
            ],
            vec![],
        ),
    };
    let readiness = match infra {
        // Yellow is as good as one node gets (replicas cannot be placed).
        Infra::Elasticsearch => Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/_cluster/health?wait_for_status=yellow&timeout=1s".into()),
                port: IntOrString::String(s.port_name.into()),
                ..HTTPGetAction::default()
            }),
            period_seconds: Some(10),
            timeout_seconds: Some(5),
            ..Probe::default()
        },
        // The servers open their port only once they accept clients.
        _ => tcp_probe(s.port_name, 10),
    };
    let mut liveness = tcp_probe(s.port_name, 20);
    liveness.initial_delay_seconds = Some(60);
    liveness.failure_threshold = Some(6);

    let container = Container {
        name: infra.name().into(),
        image: Some(managed.image.clone().unwrap_or_else(|| s.image.into())),
        args: (!args.is_empty()).then_some(args),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some(s.port_name.into()),
            container_port: s.port,
            ..ContainerPort::default()
        }]),
        readiness_probe: Some(readiness),
        liveness_probe: Some(liveness),
        resources: Some(resources),
        volume_mounts: Some(vec![VolumeMount {
            name: "data".into(),
            mount_path: s.data_dir.into(),
            ..VolumeMount::default()
        }]),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), add: None }),
            read_only_root_filesystem: Some(s.read_only_root),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };

    let size = managed.storage.size.clone().unwrap_or_else(|| s.size.into());
    let claim = PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some("data".into()),
            labels: Some(ctx.labels(component)),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: managed.storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".into(), Quantity(size))])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    };

    let sts = StatefulSet {
        metadata: ctx.meta(name.clone(), component),
        spec: Some(StatefulSetSpec {
            service_name: Some(name),
            replicas: Some(1),
            selector: LabelSelector { match_labels: Some(ctx.selector(component)), ..LabelSelector::default() },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(ctx.labels(component)), ..ObjectMeta::default() }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(s.uid),
                        run_as_group: Some(s.uid),
                        fs_group: Some(s.uid),
                        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..Default::default() }),
                        ..PodSecurityContext::default()
                    }),
                    ..PodSpec::default()
                }),
            },
            volume_claim_templates: Some(vec![claim]),
            // The claim goes with the StatefulSet only when the data should go with the
            // ChatSystem; scaling never deletes it.
            persistent_volume_claim_retention_policy: Some(StatefulSetPersistentVolumeClaimRetentionPolicy {
                when_deleted: Some(ctx.spec.retention.as_str().into()),
                when_scaled: Some("Retain".into()),
            }),
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    };
    (service, sts)
}

fn tcp_probe(port: &str, period: i32) -> Probe {
    Probe {
        tcp_socket: Some(TCPSocketAction { port: IntOrString::String(port.into()), host: None }),
        period_seconds: Some(period),
        ..Probe::default()
    }
}
