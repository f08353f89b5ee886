//! The pure part of a reconcile pass, spec -> desired objects, from the YAML fixtures in
//! `tests/fixtures/`. No API server: everything here is in memory.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use chatmesh_operator::build::{
    self, CONFIG_HASH_ANNOTATION, Component, Defaults, Desired, Infra, JobState, LABEL_INSTANCE, LABEL_MANAGED_BY,
    MANAGER, Observed,
};
use chatmesh_operator::crd::{ChatSystem, Dependency, ExternalSpec, InternalTlsMode, SecretKeyRef};
use chatmesh_operator::status::{self, Applied};
use chatmesh_operator::tls::{self, TlsMaterial};
use chatmesh_operator::validate::{self, SecretLookup};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus, StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{Container, EnvVar};
use k8s_openapi::jiff::Timestamp;
use kube::{Resource, ResourceExt};

fn load(name: &str) -> ChatSystem {
    let path = format!("{}/tests/fixtures/{name}.yaml", env!("CARGO_MANIFEST_DIR"));
    serde_saphyr::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// What the read step would find on a cluster holding nothing yet (passwords made up).
fn observed(cs: &ChatSystem) -> Observed {
    let internal_tls = (cs.spec.internal_tls.mode == InternalTlsMode::Operator).then(|| material().clone());
    Observed {
        internal_tls,
        credentials: build::credential_keys(&cs.spec).into_iter().map(|k| (k.to_string(), format!("pw{k}"))).collect(),
        external_digests: build::external_refs(&cs.spec)
            .into_iter()
            .map(|r| ((r.secret, r.key), "digest".to_string()))
            .collect(),
        ..Observed::default()
    }
}

/// A CA and service certificates as the read step would make them (made once: keys take time).
fn material() -> &'static TlsMaterial {
    static MATERIAL: OnceLock<TlsMaterial> = OnceLock::new();
    MATERIAL.get_or_init(|| {
        let now = time::OffsetDateTime::now_utc();
        tls::ensure("demo", "chat", None, &BTreeMap::new(), tls::DEFAULT_LIFETIME, now).unwrap().material
    })
}

fn defaults() -> Defaults {
    Defaults { tag: "0.9.0".into() }
}

/// The objects once the migration for the spec's image has succeeded.
fn migrated(cs: &ChatSystem) -> Desired {
    let mut obs = observed(cs);
    let first = build::build(cs, &obs, &defaults());
    obs.jobs.insert(first.migration_job, JobState::Succeeded);
    build::build(cs, &obs, &defaults())
}

fn named<'a, K: Resource>(items: &'a [K], name: &str) -> &'a K {
    items.iter().find(|o| o.meta().name.as_deref() == Some(name)).unwrap_or_else(|| {
        panic!("no {name} among {:?}", items.iter().map(|o| o.meta().name.clone()).collect::<Vec<_>>())
    })
}

fn container(d: &Deployment) -> &Container {
    &d.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0]
}

fn env<'a>(c: &'a Container, name: &str) -> Option<&'a EnvVar> {
    c.env.as_ref().unwrap().iter().find(|e| e.name == name)
}

/// (secret, key) an environment variable is read from.
fn secret_ref(c: &Container, name: &str) -> (String, String) {
    let sel = env(c, name).unwrap().value_from.as_ref().unwrap().secret_key_ref.as_ref().unwrap();
    (sel.name.clone(), sel.key.clone())
}

fn secret_data(d: &Desired, name: &str) -> BTreeMap<String, String> {
    let s = named(&d.secrets, name);
    s.data.clone().unwrap().into_iter().map(|(k, v)| (k, String::from_utf8(v.0).unwrap())).collect()
}

fn hash_of(d: &Deployment) -> String {
    let meta = d.spec.as_ref().unwrap().template.metadata.as_ref().unwrap();
    meta.annotations.as_ref().unwrap()[CONFIG_HASH_ANNOTATION].clone()
}

#[test]
fn defaults_make_a_whole_system() {
    let cs = load("minimal");
    let d = migrated(&cs);

    // Generated passwords in one Secret, the URLs built from them in another.
    assert_eq!(
        secret_data(&d, "demo-credentials").keys().collect::<Vec<_>>(),
        ["mysql-password", "mysql-root-password", "rabbitmq-password", "redis-password"]
    );
    let urls = secret_data(&d, "demo-connections");
    assert_eq!(urls["database-url"], "mysql://chatmesh:pwmysql-password@demo-mysql:3306/chatmesh");
    assert_eq!(urls["redis-url"], "redis://:pwredis-password@demo-redis:6379");
    assert_eq!(urls["amqp-url"], "amqp://chatmesh:pwrabbitmq-password@demo-rabbitmq:5672/%2f");
    assert_eq!(urls["search-url"], "http://demo-elasticsearch:9200");

    // The ConfigMap: settings and service addresses, never a secret.
    let cm = named(&d.config_maps, "demo-config").data.clone().unwrap();
    assert_eq!(cm["CHATMESH_LOG_FORMAT"], "json");
    assert_eq!(cm["CHATMESH_AUTO_MIGRATE"], "false");
    assert_eq!(cm["CHATMESH_SMS_PROVIDER"], "log");
    assert_eq!(cm["CHATMESH_SPEECH_PROVIDER"], "offline");
    assert!(!cm.contains_key("CHATMESH_OTLP_ENDPOINT"), "no traces unless asked for");
    assert_eq!(cm["CHATMESH_USER_ADDR"], "http://demo-user:10003");
    assert_eq!(cm["CHATMESH_SPEECH_ADDR"], "http://demo-speech:10001");
    assert_eq!(cm["CHATMESH_FILE_ADDR"], "http://demo-file:10002");
    assert_eq!(cm["CHATMESH_TRANSMIT_ADDR"], "http://demo-transmit:10004");
    assert_eq!(cm["CHATMESH_MESSAGE_ADDR"], "http://demo-message:10005");
    assert_eq!(cm["CHATMESH_FRIEND_ADDR"], "http://demo-friend:10006");
    // The binary's internal ports default to loopback; in a pod they must face the other pods.
    assert_eq!(cm["CHATMESH_USER_LISTEN"], "0.0.0.0:10003");
    assert_eq!(cm["CHATMESH_SPEECH_LISTEN"], "0.0.0.0:10001");
    for value in cm.values() {
        assert!(!value.contains("pw"), "a secret leaked into the ConfigMap: {value}");
    }

    // Managed servers: StatefulSet + headless Service, default images and sizes.
    let sizes = [("mysql", "mariadb:11.4", "8Gi"), ("redis", "redis:7.4", "1Gi"), ("rabbitmq", "rabbitmq:4.1", "2Gi")];
    for (infra, image, size) in sizes.into_iter().chain([("elasticsearch", "elasticsearch:7.17.25", "8Gi")]) {
        let sts = named(&d.stateful_sets, &format!("demo-{infra}"));
        let spec = sts.spec.as_ref().unwrap();
        assert_eq!(spec.service_name.as_deref(), Some(format!("demo-{infra}").as_str()));
        let pod = spec.template.spec.as_ref().unwrap();
        assert!(pod.containers[0].image.as_ref().unwrap().ends_with(image), "{infra}");
        let claim = &spec.volume_claim_templates.as_ref().unwrap()[0];
        let requests = claim.spec.as_ref().unwrap().resources.as_ref().unwrap().requests.as_ref().unwrap();
        assert_eq!(requests["storage"].0, size, "{infra}");
        let svc = named(&d.services, &format!("demo-{infra}"));
        assert_eq!(svc.spec.as_ref().unwrap().cluster_ip.as_deref(), Some("None"));
    }
    assert_eq!(d.stateful_sets.len(), 4);

    // One Deployment and one headless Service per service, plus the public gateway Service.
    assert_eq!(d.deployments.len(), 7);
    assert_eq!(d.services.len(), 4 + 7 + 1);
    for component in Component::ALL {
        let dep = named(&d.deployments, &format!("demo-{}", component.name()));
        let c = container(dep);
        assert_eq!(c.image.as_deref(), Some("ghcr.io/chatmesh/chatmesh:0.9.0"));
        assert_eq!(env(c, "CHATMESH_TARGET").unwrap().value.as_deref(), Some(component.name()));
        assert_eq!(secret_ref(c, "CHATMESH_DATABASE_URL"), ("demo-connections".into(), "database-url".into()));
        assert_eq!(secret_ref(c, "CHATMESH_REDIS_URL"), ("demo-connections".into(), "redis-url".into()));
        assert_eq!(c.env_from.as_ref().unwrap()[0].config_map_ref.as_ref().unwrap().name, "demo-config");
        assert_eq!(hash_of(dep), d.config_hash);
        // Probes on the admin port; a locked-down container.
        let probe = c.startup_probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(probe.path.as_deref(), Some("/readyz"));
        let live = c.liveness_probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(live.path.as_deref(), Some("/healthz"));
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.capabilities.as_ref().unwrap().drop.as_deref(), Some(&["ALL".to_string()][..]));
        let pod = dep.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        assert_eq!(pod.security_context.as_ref().unwrap().run_as_non_root, Some(true));
        assert_eq!(pod.enable_service_links, Some(false));
        // A stopping pod serves on until its callers' DNS moved them, then drains, before the
        // kubelet's SIGKILL. The file service is replaced (below): nobody to move to.
        let delay = env(c, "CHATMESH_SHUTDOWN_DELAY").unwrap().value.clone().unwrap();
        assert_eq!(delay, if component == Component::File { "0s" } else { "12s" }, "{}", component.name());
        assert!(pod.termination_grace_period_seconds.unwrap() >= 12 + 20, "{}", component.name());
        let svc = named(&d.services, &format!("demo-{}", component.name()));
        assert_eq!(svc.spec.as_ref().unwrap().cluster_ip.as_deref(), Some("None"));
    }
    let ports = |name: &str| -> Vec<i32> {
        named(&d.services, name).spec.as_ref().unwrap().ports.as_ref().unwrap().iter().map(|p| p.port).collect()
    };
    assert_eq!(ports("demo-gateway"), [9000, 9001, 9100]);
    assert_eq!(ports("demo-speech"), [10001, 9100]);
    assert_eq!(ports("demo-friend"), [10006, 9100]);
    assert_eq!(ports("demo-public"), [9000, 9001]);
    assert_eq!(named(&d.services, "demo-public").spec.as_ref().unwrap().type_.as_deref(), Some("ClusterIP"));
    assert!(d.ingresses.is_empty());

    // The file service mounts its claim and is replaced, not rolled (ReadWriteOnce).
    assert_eq!(
        named(&d.pvcs, "demo-files").spec.as_ref().unwrap().access_modes.as_deref(),
        Some(&["ReadWriteOnce".to_string()][..])
    );
    let file = named(&d.deployments, "demo-file");
    let fspec = file.spec.as_ref().unwrap();
    assert_eq!(fspec.strategy.as_ref().unwrap().type_.as_deref(), Some("Recreate"));
    let volumes = fspec.template.spec.as_ref().unwrap().volumes.as_ref().unwrap();
    assert!(volumes.iter().any(|v| v.persistent_volume_claim.as_ref().is_some_and(|c| c.claim_name == "demo-files")));

    // The migration Job runs the same image with --target migrate.
    let job = named(&d.jobs, &d.migration_job);
    assert!(d.migration_job.starts_with("demo-migrate-"));
    let jc = &job.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0];
    assert_eq!(jc.image.as_deref(), Some("ghcr.io/chatmesh/chatmesh:0.9.0"));
    assert_eq!(env(jc, "CHATMESH_TARGET").unwrap().value.as_deref(), Some("migrate"));
    // ... after waiting for the managed database's Service to accept connections.
    let init = &job.spec.as_ref().unwrap().template.spec.as_ref().unwrap().init_containers.as_ref().unwrap()[0];
    assert_eq!(init.name, "wait-for-database");
    assert_eq!(init.image, jc.image);
    assert_eq!(init.args.as_ref().unwrap()[..2], ["demo-mysql".to_string(), "3306".to_string()]);

    // Every object: labelled for orphan cleanup and controlled by the ChatSystem, except the
    // data that outlives it (retention Retain: the credentials and the files claim).
    for (kind, name) in d.names() {
        let meta = meta_of(&d, kind, &name);
        let labels = meta.labels.as_ref().unwrap();
        assert_eq!(labels[LABEL_INSTANCE], "demo", "{kind} {name}");
        assert_eq!(labels[LABEL_MANAGED_BY], MANAGER, "{kind} {name}");
        if name == "demo-credentials" || name == "demo-files" {
            assert!(meta.owner_references.is_none(), "{kind} {name}");
            continue;
        }
        let owner = &meta.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.name.as_str(), owner.controller), ("ChatSystem", "demo", Some(true)));
        assert_eq!(meta.namespace.as_deref(), Some("chat"));
    }
}

fn meta_of<'a>(
    d: &'a Desired,
    kind: &str,
    name: &str,
) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
    match kind {
        "Secret" => named(&d.secrets, name).meta(),
        "ConfigMap" => named(&d.config_maps, name).meta(),
        "PersistentVolumeClaim" => named(&d.pvcs, name).meta(),
        "Service" => named(&d.services, name).meta(),
        "StatefulSet" => named(&d.stateful_sets, name).meta(),
        "Job" => named(&d.jobs, name).meta(),
        "Deployment" => named(&d.deployments, name).meta(),
        "Ingress" => named(&d.ingresses, name).meta(),
        "NetworkPolicy" => named(&d.network_policies, name).meta(),
        other => panic!("unexpected kind {other}"),
    }
}

/// Each of the 16 ways to choose managed or external for the four dependencies.
#[test]
fn every_managed_external_combination() {
    let managed = load("minimal");
    let external = load("external");
    for mask in 0u8..16 {
        let mut cs = managed.clone();
        let is_external = |i: Infra| mask & (1 << Infra::ALL.iter().position(|x| *x == i).unwrap()) != 0;
        for infra in Infra::ALL {
            if is_external(infra) {
                let dep = infra.dependency(&external.spec).clone();
                match infra {
                    Infra::Mysql => cs.spec.mysql = dep,
                    Infra::Redis => cs.spec.redis = dep,
                    Infra::Rabbitmq => cs.spec.rabbitmq = dep,
                    Infra::Elasticsearch => cs.spec.elasticsearch = dep,
                }
            }
        }
        let d = migrated(&cs);
        let urls = secret_data(&d, "demo-connections");
        let gateway = container(named(&d.deployments, "demo-gateway"));
        let job = &d.jobs[0].spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0];
        for (infra, key, var) in build::CONNECTIONS_KEYS {
            let name = format!("demo-{}", infra.name());
            let has_sts = d.stateful_sets.iter().any(|s| s.name_any() == name);
            let has_svc = d.services.iter().any(|s| s.name_any() == name);
            if is_external(infra) {
                let want = infra.external(&external.spec).unwrap().url_secret.clone();
                assert!(!has_sts && !has_svc && !urls.contains_key(key), "mask {mask:04b}: {infra:?} still managed");
                assert_eq!(secret_ref(gateway, var), (want.name.clone(), want.key.clone()), "mask {mask:04b}");
                assert_eq!(secret_ref(job, var), (want.name, want.key), "mask {mask:04b}");
            } else {
                assert!(has_sts && has_svc && urls.contains_key(key), "mask {mask:04b}: {infra:?} not managed");
                assert_eq!(secret_ref(gateway, var), ("demo-connections".into(), key.into()), "mask {mask:04b}");
            }
        }
        assert_eq!(d.stateful_sets.len(), 4 - mask.count_ones() as usize, "mask {mask:04b}");
        // The migration waits for a managed database only: an external one is not ours to wait for.
        let init = d.jobs[0].spec.as_ref().unwrap().template.spec.as_ref().unwrap().init_containers.clone();
        assert_eq!(init.is_some(), !is_external(Infra::Mysql), "mask {mask:04b}");
        let creds = build::credential_keys(&cs.spec);
        assert_eq!(creds.contains(&"mysql-password"), !is_external(Infra::Mysql));
        assert_eq!(creds.contains(&"redis-password"), !is_external(Infra::Redis));
        assert_eq!(creds.contains(&"rabbitmq-password"), !is_external(Infra::Rabbitmq));
        assert_eq!(build::external_refs(&cs.spec).len(), mask.count_ones() as usize);
    }
}

#[test]
fn full_spec_reaches_every_object() {
    let cs = load("full");
    let d = migrated(&cs);

    let gw = named(&d.deployments, "prod-gateway");
    let spec = gw.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(3));
    let pod = spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.node_selector.as_ref().unwrap()["pool"], "edge");
    assert_eq!(pod.tolerations.as_ref().unwrap()[0].key.as_deref(), Some("dedicated"));
    assert!(pod.affinity.as_ref().unwrap().pod_anti_affinity.is_some());
    assert_eq!(pod.image_pull_secrets.as_ref().unwrap()[0].name, "regcred");
    let c = container(gw);
    assert_eq!(c.image.as_deref(), Some("registry.example.com:5000/chatmesh:1.2.3"));
    assert_eq!(c.image_pull_policy.as_deref(), Some("Always"));
    assert_eq!(c.resources.as_ref().unwrap().limits.as_ref().unwrap()["memory"].0, "512Mi");
    // Extra env: added, and replacing ours by name (never duplicated).
    assert_eq!(env(c, "CHATMESH_LOG").unwrap().value.as_deref(), Some("debug"));
    assert_eq!(c.env.as_ref().unwrap().iter().filter(|e| e.name == "CHATMESH_TARGET").count(), 1);
    assert_eq!(named(&d.deployments, "prod-message").spec.as_ref().unwrap().replicas, Some(0));

    // SMS and speech credentials go to the service that uses them, by reference.
    let user = container(named(&d.deployments, "prod-user"));
    assert_eq!(secret_ref(user, "CHATMESH_ALIYUN_ACCESS_KEY_ID"), ("aliyun".into(), "accessKeyId".into()));
    assert_eq!(secret_ref(user, "CHATMESH_ALIYUN_ACCESS_KEY_SECRET"), ("aliyun".into(), "accessKeySecret".into()));
    let speech = container(named(&d.deployments, "prod-speech"));
    assert_eq!(secret_ref(speech, "CHATMESH_OPENAI_API_KEY"), ("openai".into(), "apiKey".into()));
    assert!(env(container(gw), "CHATMESH_OPENAI_API_KEY").is_none());
    let cm = named(&d.config_maps, "prod-config").data.clone().unwrap();
    assert_eq!(cm["CHATMESH_SMS_PROVIDER"], "aliyun");
    assert_eq!(cm["CHATMESH_ALIYUN_SIGN_NAME"], "Chat");
    assert_eq!(cm["CHATMESH_ALIYUN_TEMPLATE_CODE"], "SMS_123456");
    assert_eq!(cm["CHATMESH_SPEECH_PROVIDER"], "openai");
    assert_eq!(cm["CHATMESH_OPENAI_BASE_URL"], "https://api.openai.example/v1");
    // Traces: every service reads the ConfigMap.
    assert_eq!(cm["CHATMESH_OTLP_ENDPOINT"], "http://otel-collector.monitoring:4317");
    assert_eq!(cm["CHATMESH_TRACE_SAMPLE_RATIO"], "0.25");

    // NodePort with fixed ports, and an Ingress with TLS.
    let public = named(&d.services, "prod-public").spec.clone().unwrap();
    assert_eq!(public.type_.as_deref(), Some("NodePort"));
    let node_ports: Vec<_> = public.ports.unwrap().iter().map(|p| p.node_port).collect();
    assert_eq!(node_ports, [Some(30900), Some(30901)]);
    let ingress = named(&d.ingresses, "prod-public").spec.clone().unwrap();
    assert_eq!(ingress.ingress_class_name.as_deref(), Some("nginx"));
    assert_eq!(ingress.tls.unwrap()[0].secret_name.as_deref(), Some("chat-tls"));
    assert_eq!(ingress.rules.unwrap()[0].host.as_deref(), Some("chat.example.com"));

    // Managed MySQL with its own image, size and class; Redis external.
    let mysql = named(&d.stateful_sets, "prod-mysql").spec.clone().unwrap();
    assert_eq!(mysql.template.spec.unwrap().containers[0].image.as_deref(), Some("mariadb:11.8"));
    let claim = mysql.volume_claim_templates.unwrap()[0].spec.clone().unwrap();
    assert_eq!(claim.storage_class_name.as_deref(), Some("fast"));
    assert_eq!(claim.resources.unwrap().requests.unwrap()["storage"].0, "50Gi");
    assert!(d.stateful_sets.iter().all(|s| s.name_any() != "prod-redis"));

    // An existing claim: none made, that one mounted, rolling updates allowed (ReadWriteMany).
    assert!(d.pvcs.is_empty());
    let file = named(&d.deployments, "prod-file").spec.clone().unwrap();
    assert!(file.strategy.is_none());
    let volumes = file.template.spec.unwrap().volumes.unwrap();
    assert!(volumes.iter().any(|v| v.persistent_volume_claim.as_ref().is_some_and(|c| c.claim_name == "shared-files")));

    let endpoint = build::gateway_endpoint(&cs, None);
    assert_eq!(endpoint, "https://chat.example.com");
}

#[test]
fn deployments_wait_for_the_migration_of_a_new_image() {
    let mut cs = load("minimal");
    // First install: nothing to keep, so no Deployment until the Job succeeds.
    let first = build::build(&cs, &observed(&cs), &defaults());
    assert!(first.deployments.is_empty());
    assert_eq!(first.held.len(), 7);
    assert_eq!(first.migration_state, None);

    // Running on 0.9.0; the spec asks for 1.0.0 whose Job has not finished.
    let mut obs = observed(&cs);
    obs.jobs.insert(first.migration_job.clone(), JobState::Succeeded);
    for c in Component::ALL {
        obs.deployed_images.insert(c, "ghcr.io/chatmesh/chatmesh:0.9.0".into());
    }
    cs.spec.image.tag = Some("1.0.0".into());
    let upgrading = build::build(&cs, &obs, &defaults());
    assert_ne!(upgrading.migration_job, first.migration_job, "a new image needs a new Job");
    assert_eq!(upgrading.deployments.len(), 7);
    for dep in &upgrading.deployments {
        assert_eq!(container(dep).image.as_deref(), Some("ghcr.io/chatmesh/chatmesh:0.9.0"));
    }
    let job = named(&upgrading.jobs, &upgrading.migration_job);
    assert_eq!(
        job.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0].image.as_deref(),
        Some("ghcr.io/chatmesh/chatmesh:1.0.0")
    );

    // A failed Job keeps the old image too; a succeeded one rolls everything.
    obs.jobs.insert(upgrading.migration_job.clone(), JobState::Failed);
    let failed = build::build(&cs, &obs, &defaults());
    assert!(
        failed.deployments.iter().all(|d| container(d).image.as_deref() == Some("ghcr.io/chatmesh/chatmesh:0.9.0"))
    );
    obs.jobs.insert(upgrading.migration_job.clone(), JobState::Succeeded);
    let done = build::build(&cs, &obs, &defaults());
    assert!(done.held.is_empty());
    assert!(done.deployments.iter().all(|d| container(d).image.as_deref() == Some("ghcr.io/chatmesh/chatmesh:1.0.0")));
}

#[test]
fn config_hash_follows_configuration_only() {
    let cs = load("minimal");
    let base = migrated(&cs).config_hash;

    let mut scaled = cs.clone();
    scaled.spec.services.gateway.replicas = 5;
    assert_eq!(migrated(&scaled).config_hash, base, "replicas are not configuration");

    let mut sms = cs.clone();
    sms.spec.sms.provider = chatmesh_operator::crd::SmsProvider::Aliyun;
    sms.spec.sms.sign_name = Some("Chat".into());
    sms.spec.sms.template_code = Some("SMS_1".into());
    sms.spec.sms.credentials_secret = Some("aliyun".into());
    let changed = migrated(&sms);
    assert_ne!(changed.config_hash, base);
    assert!(changed.deployments.iter().all(|d| hash_of(d) == changed.config_hash));

    // Rotating an external URL's value (its digest) rolls the pods too.
    let mut ext = cs.clone();
    ext.spec.mysql = Dependency {
        managed: None,
        external: Some(ExternalSpec { url_secret: SecretKeyRef { name: "db".into(), key: "url".into() } }),
    };
    let mut obs = observed(&ext);
    let one = build::build(&ext, &obs, &defaults()).config_hash;
    obs.external_digests.insert(("db".into(), "url".into()), "another".into());
    assert_ne!(build::build(&ext, &obs, &defaults()).config_hash, one);
}

#[test]
fn building_is_deterministic() {
    let cs = load("full");
    let a = migrated(&cs);
    let b = migrated(&cs);
    assert_eq!(a.config_hash, b.config_hash);
    assert_eq!(a.migration_job, b.migration_job);
    assert_eq!(serde_json::to_value(&a.deployments).unwrap(), serde_json::to_value(&b.deployments).unwrap());
}

#[test]
fn missing_secrets_are_named() {
    let cs = load("full");
    let mut lookups = BTreeMap::new();
    lookups.insert(("redis-url".to_string(), "url".to_string()), SecretLookup::Found("d".into()));
    lookups.insert(("aliyun".to_string(), "accessKeyId".to_string()), SecretLookup::Found("d".into()));
    lookups.insert(("aliyun".to_string(), "accessKeySecret".to_string()), SecretLookup::NoKey);
    lookups.insert(("openai".to_string(), "apiKey".to_string()), SecretLookup::NoSecret);
    let problems = validate::validate(&cs.spec, &lookups).unwrap_err();
    assert_eq!(
        problems,
        [
            r#"spec.sms.credentialsSecret: Secret "aliyun" has no key "accessKeySecret""#,
            r#"spec.speech.credentialsSecret: Secret "openai" not found"#,
        ]
    );
    lookups.insert(("aliyun".to_string(), "accessKeySecret".to_string()), SecretLookup::Found("d".into()));
    lookups.insert(("openai".to_string(), "apiKey".to_string()), SecretLookup::Found("d".into()));
    assert_eq!(validate::validate(&cs.spec, &lookups).unwrap().len(), 4);
}

fn ready_deployment(d: &Deployment) -> Deployment {
    let mut d = d.clone();
    let n = d.spec.as_ref().unwrap().replicas.unwrap();
    d.status = Some(DeploymentStatus {
        replicas: Some(n),
        ready_replicas: Some(n),
        updated_replicas: Some(n),
        available_replicas: Some(n),
        ..DeploymentStatus::default()
    });
    d
}

fn ready_sts(s: &StatefulSet) -> StatefulSet {
    let mut s = s.clone();
    s.status = Some(StatefulSetStatus {
        replicas: 1,
        ready_replicas: Some(1),
        updated_replicas: Some(1),
        ..StatefulSetStatus::default()
    });
    s
}

#[test]
fn conditions_change_their_time_only_when_their_status_changes() {
    let mut cs = load("minimal");
    let d = migrated(&cs);
    let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
    let t1: Timestamp = "2026-01-01T00:05:00Z".parse().unwrap();
    let t2: Timestamp = "2026-01-01T00:10:00Z".parse().unwrap();

    let applied =
        Applied { desired: &d, deployments: &d.deployments, stateful_sets: &d.stateful_sets, public_service: None };
    let first = status::compute(&cs, &applied, t0);
    let ready = status::condition(Some(&first), status::READY).unwrap();
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "ComponentsNotReady"));
    assert_eq!(status::condition(Some(&first), status::PROGRESSING).unwrap().status, "True");

    // Same situation later: identical status (so nothing is written).
    cs.status = Some(first.clone());
    assert_eq!(status::compute(&cs, &applied, t1), first);

    // Everything ready: Ready flips (new time), Degraded stays False (old time).
    let deployments: Vec<_> = d.deployments.iter().map(ready_deployment).collect();
    let stateful_sets: Vec<_> = d.stateful_sets.iter().map(ready_sts).collect();
    let applied =
        Applied { desired: &d, deployments: &deployments, stateful_sets: &stateful_sets, public_service: None };
    let second = status::compute(&cs, &applied, t2);
    let ready = status::condition(Some(&second), status::READY).unwrap();
    assert_eq!((ready.status.as_str(), ready.last_transition_time.0), ("True", t2));
    let progressing = status::condition(Some(&second), status::PROGRESSING).unwrap();
    assert_eq!((progressing.status.as_str(), progressing.reason.as_str()), ("False", "RolloutComplete"));
    let degraded = status::condition(Some(&second), status::DEGRADED).unwrap();
    assert_eq!((degraded.status.as_str(), degraded.last_transition_time.0), ("False", t0));
    assert_eq!(second.version.as_deref(), Some("0.9.0"));
    assert_eq!(second.components["gateway"].ready_replicas, 1);
    assert_eq!(second.components["mysql"].replicas, 1);
    assert_eq!(second.gateway_endpoint.as_deref(), Some("demo-public.chat.svc:9000"));
    assert_eq!(second.observed_generation, Some(1));
    let types: Vec<_> = second.conditions.iter().map(|c| c.type_.as_str()).collect();
    assert_eq!(types, ["Ready", "Progressing", "Degraded"]);
}

#[test]
fn a_failed_migration_degrades() {
    let cs = load("minimal");
    let mut obs = observed(&cs);
    let first = build::build(&cs, &obs, &defaults());
    obs.jobs.insert(first.migration_job.clone(), JobState::Failed);
    let d = build::build(&cs, &obs, &defaults());
    let applied = Applied { desired: &d, deployments: &[], stateful_sets: &[], public_service: None };
    let st = status::compute(&cs, &applied, Timestamp::now());
    let degraded = status::condition(Some(&st), status::DEGRADED).unwrap();
    assert_eq!((degraded.status.as_str(), degraded.reason.as_str()), ("True", "MigrationFailed"));
    assert!(degraded.message.contains(&d.migration_job));
    assert_eq!(st.migration.unwrap().state, chatmesh_operator::crd::MigrationState::Failed);
}

/// The committed CRD is what the Rust types generate: run
/// `cargo run -p chatmesh-operator --bin crdgen > crds/chatmesh.io_chatsystems.yaml` after changing them.
#[test]
fn committed_crd_is_current() {
    let path = format!("{}/../crds/chatmesh.io_chatsystems.yaml", env!("CARGO_MANIFEST_DIR"));
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == chatmesh_operator::crd::crd_yaml(),
        "{path} is stale: run `cargo run -p chatmesh-operator --bin crdgen > crds/chatmesh.io_chatsystems.yaml`"
    );
}

#[test]
fn crd_merges_conditions_by_type() {
    use kube::CustomResourceExt;
    let crd = serde_json::to_value(ChatSystem::crd()).unwrap();
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let conditions = &schema["properties"]["status"]["properties"]["conditions"];
    assert_eq!(conditions["x-kubernetes-list-type"], "map");
    assert_eq!(conditions["x-kubernetes-list-map-keys"], serde_json::json!(["type"]));
    let mysql = &schema["properties"]["spec"]["properties"]["mysql"];
    assert_eq!(mysql["x-kubernetes-validations"][0]["rule"], "has(self.managed) != has(self.external)");
    assert_eq!(crd["spec"]["names"]["shortNames"], serde_json::json!(["chat"]));
}

fn pod(d: &Deployment) -> &k8s_openapi::api::core::v1::PodSpec {
    d.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
}

fn tls_volume(d: &Deployment) -> Option<&k8s_openapi::api::core::v1::Volume> {
    pod(d).volumes.as_ref().unwrap().iter().find(|v| v.name == "internal-tls")
}

fn with_spec(base: &str, patch: serde_json::Value) -> ChatSystem {
    let mut value = serde_json::to_value(load(base)).unwrap();
    for (key, v) in patch.as_object().unwrap() {
        value["spec"][key] = v.clone();
    }
    serde_json::from_value(value).unwrap()
}

#[test]
fn operator_tls_makes_secrets_and_mounts_them_as_directories() {
    let cs = load("minimal");
    let d = migrated(&cs);
    let m = material();

    // The CA Secret, and one kubernetes.io/tls Secret per service with ca.crt.
    let ca = named(&d.secrets, "demo-internal-ca");
    assert_eq!(ca.type_.as_deref(), Some("kubernetes.io/tls"));
    assert_eq!(secret_data(&d, "demo-internal-ca")["tls.crt"], m.ca.cert_pem);
    assert_eq!(d.secrets.len(), 2 + 1 + 7);
    for component in Component::ALL {
        let svc = component.name();
        let secret_name = format!("demo-{svc}-tls");
        assert_eq!(named(&d.secrets, &secret_name).type_.as_deref(), Some("kubernetes.io/tls"));
        let data = secret_data(&d, &secret_name);
        assert_eq!(data.keys().collect::<Vec<_>>(), ["ca.crt", "tls.crt", "tls.key"]);
        assert_eq!(data["tls.crt"], m.services[&component].cert_pem);
        assert_eq!(data["ca.crt"], m.trusted_pem);

        let dep = named(&d.deployments, &format!("demo-{svc}"));
        let volume = tls_volume(dep).unwrap_or_else(|| panic!("{svc} mounts no certificate"));
        let source = volume.secret.as_ref().unwrap();
        assert_eq!(source.secret_name.as_deref(), Some(secret_name.as_str()));
        assert_eq!(source.items, None, "every key, as files named like the keys");
        assert_eq!(source.default_mode, Some(0o440));
        let mount = container(dep).volume_mounts.as_ref().unwrap().iter().find(|m| m.name == "internal-tls").unwrap();
        assert_eq!(mount.mount_path, "/etc/chatmesh/tls");
        assert_eq!(mount.sub_path, None, "a subPath mount would never see a renewed certificate");
        assert_eq!(mount.read_only, Some(true));
        let c = container(dep);
        assert_eq!(env(c, "CHATMESH_TLS_CERT").unwrap().value.as_deref(), Some("/etc/chatmesh/tls/tls.crt"));
        assert_eq!(env(c, "CHATMESH_TLS_KEY").unwrap().value.as_deref(), Some("/etc/chatmesh/tls/tls.key"));
        assert_eq!(env(c, "CHATMESH_TLS_CA").unwrap().value.as_deref(), Some("/etc/chatmesh/tls/ca.crt"));
        // The gRPC port is TLS for a mesh's proxy.
        let ports = named(&d.services, &format!("demo-{svc}")).spec.clone().unwrap().ports.unwrap();
        for p in ports {
            let want = (p.name.as_deref() == Some("grpc")).then_some("tls");
            assert_eq!(p.app_protocol.as_deref(), want, "{svc} {:?}", p.name);
        }
    }
    // The addresses stay http://<name>-<svc>:<port>: the host is the name the certificate has.
    let cm = named(&d.config_maps, "demo-config").data.clone().unwrap();
    assert_eq!(cm["CHATMESH_USER_ADDR"], "http://demo-user:10003");
    // Certificates are not configuration: renewing them rolls no pod.
    let mut renewed = observed(&cs);
    renewed.jobs.insert(d.migration_job.clone(), JobState::Succeeded);
    let other =
        tls::ensure("demo", "chat", None, &BTreeMap::new(), tls::DEFAULT_LIFETIME, time::OffsetDateTime::now_utc());
    renewed.internal_tls = Some(other.unwrap().material);
    assert_eq!(build::build(&cs, &renewed, &defaults()).config_hash, d.config_hash);

    // The migration Job makes no gRPC call: no certificate, no TLS variable.
    let job = named(&d.jobs, &d.migration_job);
    let jpod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert!(jpod.volumes.as_ref().unwrap().iter().all(|v| v.name != "internal-tls"));
    assert!(jpod.containers[0].env.as_ref().unwrap().iter().all(|e| !e.name.starts_with("CHATMESH_TLS_")));
}

#[test]
fn secret_tls_mounts_the_users_secrets() {
    // One Secret for all: <svc>.crt and <svc>.key become tls.crt and tls.key.
    let cs =
        with_spec("minimal", serde_json::json!({"internalTls": {"mode": "secret", "secret": {"name": "mesh-certs"}}}));
    let d = migrated(&cs);
    assert!(d.secrets.iter().all(|s| !s.name_any().ends_with("-tls") && s.name_any() != "demo-internal-ca"));
    for component in Component::ALL {
        let svc = component.name();
        let dep = named(&d.deployments, &format!("demo-{svc}"));
        let source = tls_volume(dep).unwrap().secret.clone().unwrap();
        assert_eq!(source.secret_name.as_deref(), Some("mesh-certs"));
        let items: Vec<(String, String)> = source.items.unwrap().into_iter().map(|i| (i.key, i.path)).collect();
        assert_eq!(
            items,
            [
                ("ca.crt".into(), "ca.crt".into()),
                (format!("{svc}.crt"), "tls.crt".into()),
                (format!("{svc}.key"), "tls.key".into())
            ]
        );
        assert!(env(container(dep), "CHATMESH_TLS_CERT").is_some());
    }
    let refs = build::tls_refs(&cs.spec);
    assert_eq!(refs.len(), 1 + 2 * 7, "ca.crt once, a certificate and key per service");

    // A missing key is named; present ones do not enter the config hash (renewals roll nothing).
    let mut lookups: BTreeMap<(String, String), SecretLookup> =
        refs.iter().map(|r| ((r.secret.clone(), r.key.clone()), SecretLookup::Found("d".into()))).collect();
    assert!(validate::validate(&cs.spec, &lookups).unwrap().is_empty());
    lookups.insert(("mesh-certs".into(), "speech.key".into()), SecretLookup::NoKey);
    assert_eq!(
        validate::validate(&cs.spec, &lookups).unwrap_err(),
        [r#"spec.internalTls.secret.name: Secret "mesh-certs" has no key "speech.key""#]
    );

    // The certificates' content too: each must work for its service.
    let m = material();
    let mut files = BTreeMap::new();
    for (component, cert) in &m.services {
        files.insert(*component, (cert.cert_pem.clone(), cert.key_pem.clone(), m.trusted_pem.clone()));
    }
    let now = time::OffsetDateTime::now_utc();
    assert!(validate::validate_provided(&cs.spec, "demo", &files, now).is_empty());
    let gateway = files[&Component::Gateway].clone();
    files.insert(Component::Speech, gateway);
    assert_eq!(
        validate::validate_provided(&cs.spec, "demo", &files, now),
        [
            r#"spec.internalTls.secret.name: Secret "mesh-certs" (speech.crt, speech.key and ca.crt): the certificate does not name spiffe://chatmesh.io/service/speech (it names ["demo-gateway", "demo-gateway.chat", "demo-gateway.chat.svc", "demo-gateway.chat.svc.cluster.local", "spiffe://chatmesh.io/service/gateway"])"#
        ]
    );

    // One Secret per service (e.g. cert-manager's): standard keys.
    let services: serde_json::Map<String, serde_json::Value> =
        Component::ALL.iter().map(|c| (c.name().to_string(), format!("{}-cert", c.name()).into())).collect();
    let cs =
        with_spec("minimal", serde_json::json!({"internalTls": {"mode": "secret", "secret": {"services": services}}}));
    let d = migrated(&cs);
    let user = tls_volume(named(&d.deployments, "demo-user")).unwrap().secret.clone().unwrap();
    assert_eq!(user.secret_name.as_deref(), Some("user-cert"));
    let paths: Vec<String> = user.items.unwrap().into_iter().map(|i| i.path).collect();
    assert_eq!(paths, ["ca.crt", "tls.crt", "tls.key"]);
    let refs = build::tls_refs(&cs.spec);
    assert_eq!(refs.len(), 3 * 7);
    let problems = validate::validate(&cs.spec, &BTreeMap::new()).unwrap_err();
    assert!(problems.contains(&r#"spec.internalTls.secret.services.user: Secret "user-cert" not found"#.to_string()));
}

#[test]
fn disabled_tls_mounts_nothing() {
    let cs = with_spec("minimal", serde_json::json!({"internalTls": {"mode": "disabled"}}));
    let d = migrated(&cs);
    assert_eq!(d.secrets.len(), 2);
    for dep in &d.deployments {
        assert!(tls_volume(dep).is_none());
        assert!(container(dep).env.as_ref().unwrap().iter().all(|e| !e.name.starts_with("CHATMESH_TLS_")));
    }
    for svc in &d.services {
        assert!(svc.spec.as_ref().unwrap().ports.as_ref().unwrap().iter().all(|p| p.app_protocol.is_none()));
    }
    assert!(build::tls_refs(&cs.spec).is_empty());
}

#[test]
fn bad_lifetimes_are_named() {
    let cs = with_spec("minimal", serde_json::json!({"internalTls": {"certificateLifetime": "5s"}}));
    let problems = validate::validate(&cs.spec, &BTreeMap::new()).unwrap_err();
    assert_eq!(problems.len(), 1);
    assert!(problems[0].starts_with("spec.internalTls.certificateLifetime \"5s\" is outside"), "{problems:?}");
}

/// (component label values a peer's selector admits, ports) of each rule of a policy.
fn rules(d: &Desired, name: &str) -> Vec<(Vec<String>, Vec<i32>)> {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let spec = named(&d.network_policies, name).spec.clone().unwrap();
    assert_eq!(spec.policy_types.as_deref(), Some(&["Ingress".to_string()][..]), "{name}");
    spec.ingress
        .unwrap_or_default()
        .into_iter()
        .map(|rule| {
            let ports = rule
                .ports
                .unwrap()
                .into_iter()
                .map(|p| {
                    assert_eq!(p.protocol.as_deref(), Some("TCP"));
                    match p.port {
                        Some(IntOrString::Int(n)) => n,
                        other => panic!("{other:?}"),
                    }
                })
                .collect();
            let from = match rule.from {
                None => vec!["*".to_string()],
                Some(peers) => peers
                    .into_iter()
                    .map(|peer| match (peer.pod_selector, peer.namespace_selector) {
                        (Some(pods), None) => {
                            let labels = pods.match_labels.unwrap();
                            assert_eq!(labels[LABEL_INSTANCE], "demo");
                            assert_eq!(labels["app.kubernetes.io/name"], "chatmesh");
                            let expr = &pods.match_expressions.unwrap()[0];
                            assert_eq!(
                                (expr.key.as_str(), expr.operator.as_str()),
                                ("app.kubernetes.io/component", "In")
                            );
                            expr.values.clone().unwrap().join(",")
                        }
                        (None, Some(ns)) => format!("ns:{}", serde_json::to_string(&ns).unwrap()),
                        other => panic!("{other:?}"),
                    })
                    .collect(),
            };
            (from, ports)
        })
        .collect()
}

#[test]
fn network_policies_open_each_port_to_its_callers_only() {
    let cs = load("minimal");
    let d = migrated(&cs);
    // Deny all ingress to every pod of this ChatSystem (services, servers, the Job).
    let deny = named(&d.network_policies, "demo-default-deny").spec.clone().unwrap();
    let selector = deny.pod_selector.unwrap().match_labels.unwrap();
    assert_eq!(
        selector,
        BTreeMap::from([
            ("app.kubernetes.io/instance".to_string(), "demo".to_string()),
            ("app.kubernetes.io/name".to_string(), "chatmesh".to_string())
        ])
    );
    assert_eq!(deny.ingress, None);
    assert_eq!(deny.policy_types.as_deref(), Some(&["Ingress".to_string()][..]), "egress stays open");

    let monitoring = r#"ns:{"matchLabels":{"kubernetes.io/metadata.name":"monitoring"}}"#.to_string();
    let metrics = (vec![monitoring.clone()], vec![9100]);
    let callers = |list: &str| vec![list.to_string()];
    // The table of the issue, written out: who may call which gRPC port.
    assert_eq!(rules(&d, "demo-gateway"), [(vec!["*".into()], vec![9000, 9001]), metrics.clone()]);
    assert_eq!(rules(&d, "demo-user"), [(callers("gateway,friend,transmit,message"), vec![10003]), metrics.clone()]);
    assert_eq!(rules(&d, "demo-file"), [(callers("gateway,user,transmit,message"), vec![10002]), metrics.clone()]);
    for (svc, port) in [("friend", 10006), ("transmit", 10004), ("message", 10005), ("speech", 10001)] {
        assert_eq!(rules(&d, &format!("demo-{svc}")), [(callers("gateway"), vec![port]), metrics.clone()], "{svc}");
    }
    // Servers: from the services that use them (and the migration Job and the backup for the
    // database).
    assert_eq!(rules(&d, "demo-mysql"), [(callers("user,friend,file,message,transmit,migrate,backup"), vec![3306])]);
    assert_eq!(rules(&d, "demo-redis"), [(callers("gateway,user,friend,transmit"), vec![6379])]);
    assert_eq!(rules(&d, "demo-rabbitmq"), [(callers("transmit,message"), vec![5672])]);
    assert_eq!(rules(&d, "demo-elasticsearch"), [(callers("user,friend,message"), vec![9200])]);
    assert_eq!(d.network_policies.len(), 1 + 7 + 4);
    // Each policy selects exactly its component's pods.
    for policy in d.network_policies.iter().filter(|p| p.name_any() != "demo-default-deny") {
        let labels = policy.spec.as_ref().unwrap().pod_selector.clone().unwrap().match_labels.unwrap();
        assert_eq!(format!("demo-{}", labels["app.kubernetes.io/component"]), policy.name_any());
    }

    // External servers get no policy; peers and the metrics namespaces are configurable.
    let cs = with_spec(
        "external",
        serde_json::json!({"networkPolicy": {
            "gatewayFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}],
            "metricsFrom": {"matchLabels": {"team": "observability"}}}}),
    );
    let d = migrated(&cs);
    assert_eq!(d.network_policies.len(), 1 + 7);
    assert_eq!(
        rules(&d, "demo-gateway")[0].0,
        [r#"ns:{"matchLabels":{"kubernetes.io/metadata.name":"ingress-nginx"}}"#]
    );
    assert_eq!(rules(&d, "demo-user")[1].0, [r#"ns:{"matchLabels":{"team":"observability"}}"#]);

    let off = with_spec("minimal", serde_json::json!({"networkPolicy": {"enabled": false}}));
    assert!(migrated(&off).network_policies.is_empty());
}

#[test]
fn the_call_table_is_the_issues() {
    let calls: Vec<(&str, Vec<&str>)> = build::CALLS
        .iter()
        .map(|(caller, callees)| (caller.name(), callees.iter().map(|c| c.name()).collect()))
        .collect();
    assert_eq!(
        calls,
        [
            ("gateway", vec!["user", "friend", "file", "transmit", "message", "speech"]),
            ("user", vec!["file"]),
            ("friend", vec!["user"]),
            ("transmit", vec!["user", "file"]),
            ("message", vec!["user", "file"]),
        ]
    );
    assert!(build::callers(Component::Gateway).is_empty(), "nothing calls the gateway over gRPC");
}

/// The policies' call table is the services' authorization table seen per port: every
/// (caller, service) pair an RPC allows has its port open, and no other.
#[test]
fn the_call_table_matches_the_services_authorization() {
    use std::collections::BTreeSet;
    let service_of = |path: &str| match path.split('/').nth(1).unwrap() {
        "bite_im.UserService" => "user",
        "bite_im.FileService" => "file",
        "bite_im.FriendService" => "friend",
        "bite_im.MsgTransmitService" => "transmit",
        "bite_im.MsgStorageService" => "message",
        "bite_im.SpeechService" => "speech",
        other => panic!("an RPC of an unknown service: {other}"),
    };
    let mut authorized = BTreeSet::new();
    for (path, callers) in chatmesh_common::mesh::authz::TABLE {
        for caller in *callers {
            authorized.insert((caller.name(), service_of(path)));
        }
    }
    let mut opened = BTreeSet::new();
    for (caller, callees) in build::CALLS {
        for callee in callees {
            opened.insert((caller.name(), callee.name()));
        }
    }
    assert_eq!(opened, authorized);
}

#[test]
fn pod_annotations_and_labels_reach_the_pods() {
    let cs = with_spec(
        "minimal",
        serde_json::json!({"services": {"user": {
            "podAnnotations": {"linkerd.io/inject": "enabled"},
            "podLabels": {"sidecar.istio.io/inject": "true", "team": "chat"}}}}),
    );
    let d = migrated(&cs);
    let meta = named(&d.deployments, "demo-user").spec.clone().unwrap().template.metadata.unwrap();
    let annotations = meta.annotations.unwrap();
    assert_eq!(annotations["linkerd.io/inject"], "enabled");
    assert_eq!(annotations[CONFIG_HASH_ANNOTATION], d.config_hash);
    let labels = meta.labels.unwrap();
    assert_eq!(labels["sidecar.istio.io/inject"], "true");
    assert_eq!(labels["team"], "chat");
    assert_eq!(labels["app.kubernetes.io/component"], "user");
    // Other services and the Job are untouched.
    let gw = named(&d.deployments, "demo-gateway").spec.clone().unwrap().template.metadata.unwrap();
    assert!(!gw.annotations.unwrap().contains_key("linkerd.io/inject"));
    let job = named(&d.jobs, &d.migration_job).spec.clone().unwrap().template.metadata.unwrap();
    assert!(!job.labels.unwrap().contains_key("team"));

    // Were the schema bypassed, the operator's own labels and hash still win.
    let mut cs = cs.clone();
    cs.spec.services.user.pod_labels.insert("app.kubernetes.io/component".into(), "evil".into());
    cs.spec.services.user.pod_annotations.insert(CONFIG_HASH_ANNOTATION.into(), "x".into());
    let d = migrated(&cs);
    let meta = named(&d.deployments, "demo-user").spec.clone().unwrap().template.metadata.unwrap();
    assert_eq!(meta.labels.unwrap()["app.kubernetes.io/component"], "user");
    assert_eq!(meta.annotations.unwrap()[CONFIG_HASH_ANNOTATION], d.config_hash);
}

/// (requests, limits) of a container's cpu and memory, "-" where unset.
fn sizes(c: &Container) -> [String; 4] {
    let r = c.resources.as_ref().expect("every container has resources");
    let get = |m: &Option<BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>, k: &str| {
        m.as_ref().and_then(|m| m.get(k)).map_or("-".to_string(), |q| q.0.clone())
    };
    [get(&r.requests, "cpu"), get(&r.requests, "memory"), get(&r.limits, "cpu"), get(&r.limits, "memory")]
}

#[test]
fn every_container_has_requests_and_limits_by_default() {
    let cs = load("minimal");
    let d = migrated(&cs);
    let mut containers: Vec<&Container> = d.deployments.iter().map(container).collect();
    for s in &d.stateful_sets {
        containers.push(&s.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0]);
    }
    for j in &d.jobs {
        containers.push(&j.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0]);
    }
    assert_eq!(containers.len(), 7 + 4 + 1);
    for c in containers {
        let s = sizes(c);
        assert!(!s.contains(&"-".to_string()), "{}: {s:?}", c.name);
    }
    let gateway = named(&d.deployments, "demo-gateway");
    assert_eq!(sizes(container(gateway)), ["100m", "128Mi", "1", "512Mi"]);
    // Elasticsearch's heap is half its default 2Gi limit.
    let es = named(&d.stateful_sets, "demo-elasticsearch");
    let es = &es.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0];
    assert_eq!(env(es, "ES_JAVA_OPTS").unwrap().value.as_deref(), Some("-Xms1024m -Xmx1024m"));
}

#[test]
fn resources_are_overridable_and_the_heap_follows_the_limit() {
    let cs = with_spec(
        "minimal",
        serde_json::json!({
            "migration": {"resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "2Gi"}}},
            "elasticsearch": {"managed": {"resources": {"limits": {"memory": "6Gi"}}}},
            "services": {"user": {"resources": {"requests": {"cpu": "300m"}}}},
        }),
    );
    let d = migrated(&cs);
    let job = &d.jobs[0].spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0];
    assert_eq!(sizes(job), ["1", "1Gi", "2", "2Gi"]);
    // A spec's resources replace the default as a whole.
    assert_eq!(sizes(container(named(&d.deployments, "demo-user"))), ["300m", "-", "-", "-"]);
    let es = named(&d.stateful_sets, "demo-elasticsearch");
    let es = &es.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0];
    assert_eq!(env(es, "ES_JAVA_OPTS").unwrap().value.as_deref(), Some("-Xms3072m -Xmx3072m"));

    use chatmesh_operator::build::resources::{bytes, elasticsearch_heap_mib};
    use k8s_openapi::api::core::v1::ResourceRequirements;
    assert_eq!(bytes("512Mi"), Some(512 << 20));
    assert_eq!(bytes("1.5G"), Some(1_500_000_000));
    assert_eq!(bytes("12e6"), None);
    let limit = |m: &str| -> ResourceRequirements {
        serde_json::from_value(serde_json::json!({"limits": {"memory": m}})).unwrap()
    };
    // Floors and caps: a tiny limit still gets a usable heap, a huge one stays under 31 GiB.
    assert_eq!(elasticsearch_heap_mib(&limit("256Mi")), 256);
    assert_eq!(elasticsearch_heap_mib(&limit("128Gi")), 31 * 1024 - 1);
    // An unparseable limit falls back to the old fixed heap rather than failing the pass.
    assert_eq!(elasticsearch_heap_mib(&limit("1e9")), 512);
}

#[test]
fn retention_decides_who_owns_the_data() {
    let owned = |d: &Desired, name: &str| -> (bool, bool) {
        let secret = named(&d.secrets, name).metadata.owner_references.is_some();
        let claim = d.pvcs.iter().any(|p| p.metadata.owner_references.is_some());
        (secret, claim)
    };
    let retain = migrated(&load("minimal"));
    assert_eq!(owned(&retain, "demo-credentials"), (false, false));
    // Everything else is still owned (garbage-collected with the ChatSystem).
    assert!(named(&retain.secrets, "demo-connections").metadata.owner_references.is_some());
    let delete = migrated(&with_spec("minimal", serde_json::json!({"retention": "Delete"})));
    assert_eq!(owned(&delete, "demo-credentials"), (true, true));
    let policy = |d: &Desired| {
        let s = named(&d.stateful_sets, "demo-mysql").spec.as_ref().unwrap();
        s.persistent_volume_claim_retention_policy.as_ref().unwrap().when_deleted.clone().unwrap()
    };
    assert_eq!((policy(&retain), policy(&delete)), ("Retain".to_string(), "Delete".to_string()));
    assert_eq!(build::credential_server("mysql-root-password"), Some(Infra::Mysql));
    assert_eq!(build::credential_server("rabbitmq-password"), Some(Infra::Rabbitmq));
}

#[test]
fn drains_take_one_pod_at_a_time_and_replicas_spread() {
    let d = migrated(&load("full"));
    // gateway 3, user 2, file 2 replicas: a budget each; one replica (or none): no budget,
    // which would block every drain of the node.
    let mut pdbs: Vec<String> = d.pdbs.iter().map(|p| p.name_any()).collect();
    pdbs.sort();
    assert_eq!(pdbs, ["prod-file", "prod-gateway", "prod-user"]);
    let pdb = named(&d.pdbs, "prod-gateway").spec.as_ref().unwrap();
    assert_eq!(pdb.max_unavailable, Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1)));
    let selector = pdb.selector.as_ref().unwrap().match_labels.as_ref().unwrap();
    assert_eq!(
        selector,
        named(&d.deployments, "prod-gateway").spec.as_ref().unwrap().selector.match_labels.as_ref().unwrap()
    );
    assert!(d.names().contains(&("PodDisruptionBudget", "prod-user".to_string())));

    let spread = |d: &Desired, name: &str| -> Vec<(String, String)> {
        pod(named(&d.deployments, name))
            .topology_spread_constraints
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| (c.topology_key.clone(), c.when_unsatisfiable.clone()))
            .collect()
    };
    let by = |k: &str| (k.to_string(), "ScheduleAnyway".to_string());
    assert_eq!(spread(&d, "prod-user"), [by("kubernetes.io/hostname"), by("topology.kubernetes.io/zone")]);
    let own = with_spec("minimal", serde_json::json!({"services": {"user": {"topologySpreadConstraints": []}}}));
    let d = migrated(&own);
    assert!(spread(&d, "demo-user").is_empty());
    assert_eq!(spread(&d, "demo-friend").len(), 2);
    assert!(d.pdbs.is_empty());

    // Ready = serving (/healthz); the backends gate only the start (/readyz).
    let c = container(named(&d.deployments, "demo-user"));
    let path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        p.as_ref().unwrap().http_get.as_ref().unwrap().path.clone().unwrap()
    };
    assert_eq!(path(&c.readiness_probe), "/healthz");
    assert_eq!(path(&c.startup_probe), "/readyz");
}

#[test]
fn the_ingress_keeps_websockets_open_and_takes_uploads() {
    let d = migrated(&load("full"));
    let ingress = &d.ingresses[0];
    let a = ingress.metadata.annotations.as_ref().unwrap();
    assert_eq!(a["nginx.ingress.kubernetes.io/proxy-read-timeout"], "3600");
    assert_eq!(a["nginx.ingress.kubernetes.io/proxy-body-size"], "100m");
    // Only the HTTP port (which serves no /metrics) is behind it.
    let paths = &ingress.spec.as_ref().unwrap().rules.as_ref().unwrap()[0].http.as_ref().unwrap().paths;
    let port = paths[0].backend.service.as_ref().unwrap().port.as_ref().unwrap();
    assert_eq!((paths.len(), port.name.as_deref()), (1, Some("http")));
    // The spec's annotations win.
    let own = with_spec(
        "full",
        serde_json::json!({"gateway": {"ingress": {"host": "chat.example.com",
            "annotations": {"nginx.ingress.kubernetes.io/proxy-body-size": "1g"}}}}),
    );
    let d = migrated(&own);
    let a = d.ingresses[0].metadata.annotations.as_ref().unwrap();
    assert_eq!(a["nginx.ingress.kubernetes.io/proxy-body-size"], "1g");
    assert_eq!(a["nginx.ingress.kubernetes.io/proxy-send-timeout"], "3600");
    // Failed passes back off: 5 s, doubling, at most 5 min (with jitter).
    use chatmesh_operator::reconcile::retry_after;
    assert!((4..=6).contains(&retry_after(1).as_secs()));
    assert!((16..=24).contains(&retry_after(3).as_secs()));
    assert!(retry_after(30).as_secs() <= 360);
}

#[test]
fn backups_dump_the_managed_database_on_a_schedule_and_keep_the_newest() {
    assert!(migrated(&load("minimal")).cron_jobs.is_empty(), "off unless asked for");
    let cs = with_spec("minimal", serde_json::json!({"backup": {"keep": 3, "size": "5Gi"}}));
    let d = migrated(&cs);
    let cron = named(&d.cron_jobs, "demo-backup").spec.as_ref().unwrap();
    assert_eq!(cron.schedule, "0 3 * * *");
    assert_eq!(cron.concurrency_policy.as_deref(), Some("Forbid"));
    let pod = cron.job_template.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let c = &pod.containers[0];
    assert_eq!(c.image.as_deref(), Some("docker.io/library/mariadb:11.4"));
    let script = c.command.as_ref().unwrap().join(" ");
    assert!(script.contains("mariadb-dump") && script.contains("--single-transaction"), "{script}");
    assert!(script.contains("tail -n +$((KEEP + 1))"), "{script}");
    assert_eq!(env(c, "KEEP").unwrap().value.as_deref(), Some("3"));
    assert_eq!(env(c, "DB_HOST").unwrap().value.as_deref(), Some("demo-mysql"));
    assert_eq!(secret_ref(c, "MYSQL_PWD"), ("demo-credentials".into(), "mysql-root-password".into()));
    assert_eq!(sizes(c), ["50m", "64Mi", "500m", "256Mi"]);
    let volume = &pod.volumes.as_ref().unwrap()[0];
    assert_eq!(volume.persistent_volume_claim.as_ref().unwrap().claim_name, "demo-backups");
    let claim = named(&d.pvcs, "demo-backups");
    assert!(claim.metadata.owner_references.is_none(), "retained like the data");
    assert_eq!(claim.spec.as_ref().unwrap().resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"].0, "5Gi");
    // The backup pods reach MariaDB through its NetworkPolicy.
    let labels = cron.job_template.spec.as_ref().unwrap().template.metadata.as_ref().unwrap().labels.as_ref().unwrap();
    assert_eq!(labels["app.kubernetes.io/component"], "backup");
    assert!(build::infra_clients(Infra::Mysql).contains(&"backup"));
    // An external database has no managed server to dump.
    let ext =
        with_spec("minimal", serde_json::json!({"backup": {}, "mysql": {"external": {"urlSecret": {"name": "db"}}}}));
    assert!(migrated(&ext).cron_jobs.is_empty());
}
