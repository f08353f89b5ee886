//! The reconciler against a real kube-apiserver + etcd (`e2e/infra/kube.sh`, which exports
//! CHATMESH_TEST_KUBECONFIG). Skipped with a message when that is unset, unless
//! CHATMESH_REQUIRE_REAL_BACKENDS is set, in which case the tests fail.
//!
//! That control plane has no kubelet, scheduler or controller-manager: no pod ever runs, no
//! Deployment, StatefulSet or Job reports status by itself, and nothing garbage-collects.
//! Where a test needs a workload's status it writes it through the status subresource itself,
//! as those controllers would. Each test works in its own namespace and calls the reconcile
//! function directly (in-process), one pass at a time.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chatmesh_operator::build::{CONFIG_HASH_ANNOTATION, Defaults, LABEL_INSTANCE, LABEL_MANAGED_BY, MANAGER};
use chatmesh_operator::crd::ChatSystem;
use chatmesh_operator::reconcile::{self, Context};
use chatmesh_operator::status;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, PersistentVolumeClaim, Secret, Service};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::events::{Recorder, Reporter};
use kube::{Client, Config, CustomResourceExt, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::OnceCell;

/// A client for the test cluster, or None (after saying why) when the tests should skip.
async fn client() -> Option<Client> {
    let Ok(path) = std::env::var("CHATMESH_TEST_KUBECONFIG") else {
        if std::env::var_os("CHATMESH_REQUIRE_REAL_BACKENDS").is_some() {
            panic!("CHATMESH_REQUIRE_REAL_BACKENDS is set but CHATMESH_TEST_KUBECONFIG is not: run e2e/infra/kube.sh");
        }
        eprintln!("skipped: CHATMESH_TEST_KUBECONFIG is unset (start a control plane with e2e/infra/kube.sh)");
        return None;
    };
    chatmesh_operator::install_tls_provider();
    let kubeconfig = Kubeconfig::read_from(&path).expect("reading CHATMESH_TEST_KUBECONFIG");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.unwrap();
    let client = Client::try_from(config).unwrap();
    install_crd(&client).await;
    Some(client)
}

/// Applies the committed CRD again: the API server is shared, and another checkout's tests
/// may have applied theirs since this binary started (for tests of the CRD's own rules).
async fn reinstall_crd(client: &Client) {
    let path = format!("{}/../crds/chatmesh.io_chatsystems.yaml", env!("CARGO_MANIFEST_DIR"));
    let crd: CustomResourceDefinition = serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    api.patch(&crd.name_any(), &PatchParams::apply("chatmesh-tests").force(), &Patch::Apply(&crd)).await.unwrap();
}

/// Installs the committed CRD once per test binary and waits until it is served.
async fn install_crd(client: &Client) {
    static INSTALLED: OnceCell<()> = OnceCell::const_new();
    INSTALLED
        .get_or_init(|| async {
            let path = format!("{}/../crds/chatmesh.io_chatsystems.yaml", env!("CARGO_MANIFEST_DIR"));
            let crd: CustomResourceDefinition =
                serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
            let api: Api<CustomResourceDefinition> = Api::all(client.clone());
            api.patch(&crd.name_any(), &PatchParams::apply("chatmesh-tests").force(), &Patch::Apply(&crd))
                .await
                .unwrap();
            for _ in 0..100 {
                let crd = api.get(ChatSystem::crd_name()).await.unwrap();
                let established = crd.status.and_then(|s| s.conditions).unwrap_or_default();
                if established.iter().any(|c| c.type_ == "Established" && c.status == "True") {
                    // Established can precede the endpoint serving requests by a moment.
                    let cs: Api<ChatSystem> = Api::all(client.clone());
                    if cs.list(&ListParams::default().limit(1)).await.is_ok() {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("the ChatSystem CRD never became established");
        })
        .await;
    install_pod_monitor_crd(client).await;
}

/// A stand-in for the Prometheus Operator's PodMonitor CRD (same group, version and names;
/// any content), installed before any test runs so every pass of every test sees the same API.
async fn install_pod_monitor_crd(client: &Client) {
    static INSTALLED: OnceCell<()> = OnceCell::const_new();
    INSTALLED
        .get_or_init(|| async {
            let crd: CustomResourceDefinition = serde_json::from_value(json!({
                "metadata": {"name": "podmonitors.monitoring.coreos.com"},
                "spec": {"group": "monitoring.coreos.com", "scope": "Namespaced",
                    "names": {"plural": "podmonitors", "singular": "podmonitor", "kind": "PodMonitor", "listKind": "PodMonitorList"},
                    "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema":
                        {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}
            }))
            .unwrap();
            let api: Api<CustomResourceDefinition> = Api::all(client.clone());
            api.patch(&crd.name_any(), &PatchParams::apply("chatmesh-tests").force(), &Patch::Apply(&crd))
                .await
                .unwrap();
            for _ in 0..100 {
                if reconcile::serves(client, "monitoring.coreos.com/v1", "podmonitors").await.unwrap() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("the PodMonitor CRD never became served");
        })
        .await;
}

/// A namespace of its own for a test (random suffix: a namespace can't be deleted for real
/// without the namespace controller, so names are never reused).
async fn namespace(client: &Client, test: &str) -> String {
    let suffix: u32 = rand::random();
    let name = format!("op-{test}-{suffix:08x}");
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    api.create(&PostParams::default(), &ns).await.unwrap();
    name
}

fn context(client: &Client) -> Arc<Context> {
    let reporter = Reporter { controller: "chatmesh-operator-test".into(), instance: None };
    Arc::new(Context {
        client: client.clone(),
        recorder: Recorder::new(client.clone(), reporter),
        defaults: Defaults { tag: "0.9.0".into() },
        requeue: Duration::from_secs(300),
    })
}

struct Harness {
    client: Client,
    ctx: Arc<Context>,
    ns: String,
    name: String,
}

impl Harness {
    async fn new(test: &str, spec: serde_json::Value) -> Option<Self> {
        let client = client().await?;
        let ns = namespace(&client, test).await;
        let h = Harness { ctx: context(&client), client, ns, name: "demo".into() };
        let cs: ChatSystem = serde_json::from_value(json!({
            "apiVersion": "chatmesh.io/v1alpha1", "kind": "ChatSystem",
            "metadata": {"name": h.name}, "spec": spec,
        }))
        .unwrap();
        h.api::<ChatSystem>().create(&PostParams::default(), &cs).await.unwrap();
        Some(h)
    }

    fn api<K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>>(&self) -> Api<K> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    async fn cs(&self) -> ChatSystem {
        self.api::<ChatSystem>().get(&self.name).await.unwrap()
    }

    /// One reconcile pass on the ChatSystem as stored now; returns it as stored afterwards.
    async fn reconcile(&self) -> ChatSystem {
        reconcile::reconcile(Arc::new(self.cs().await), self.ctx.clone()).await.expect("reconcile");
        self.cs().await
    }

    async fn patch_spec(&self, spec: serde_json::Value) {
        let patch = Patch::Merge(json!({ "spec": spec }));
        self.api::<ChatSystem>().patch(&self.name, &PatchParams::default(), &patch).await.unwrap();
    }

    async fn get<K>(&self, name: &str) -> Option<K>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        self.api::<K>().get_opt(name).await.unwrap()
    }

    async fn names<K>(&self) -> Vec<String>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let mut names: Vec<String> =
            self.api::<K>().list(&ListParams::default()).await.unwrap().items.iter().map(|o| o.name_any()).collect();
        names.sort();
        names
    }

    /// Writes a Job's status as the Job controller would on success (or failure).
    async fn finish_job(&self, name: &str, succeeded: bool) {
        let now = "2026-01-01T00:00:00Z";
        let status = if succeeded {
            json!({"startTime": now, "completionTime": now, "succeeded": 1, "conditions": [
                {"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": now},
                {"type": "Complete", "status": "True", "lastTransitionTime": now}]})
        } else {
            json!({"startTime": now, "failed": 11, "conditions": [
                {"type": "FailureTarget", "status": "True", "lastTransitionTime": now, "reason": "BackoffLimitExceeded"},
                {"type": "Failed", "status": "True", "lastTransitionTime": now, "reason": "BackoffLimitExceeded"}]})
        };
        self.api::<Job>()
            .patch_status(name, &PatchParams::default(), &Patch::Merge(json!({ "status": status })))
            .await
            .unwrap_or_else(|e| panic!("writing Job {name}'s status: {e}"));
    }

    /// Writes every Deployment's and StatefulSet's status as their controllers would once
    /// all pods are ready.
    async fn mark_workloads_ready(&self) {
        for d in self.api::<Deployment>().list(&ListParams::default()).await.unwrap() {
            let n = d.spec.as_ref().unwrap().replicas.unwrap_or(1);
            let status = json!({"status": {"observedGeneration": d.metadata.generation, "replicas": n,
                "updatedReplicas": n, "readyReplicas": n, "availableReplicas": n}});
            self.api::<Deployment>()
                .patch_status(&d.name_any(), &PatchParams::default(), &Patch::Merge(status))
                .await
                .unwrap();
        }
        for s in self.api::<StatefulSet>().list(&ListParams::default()).await.unwrap() {
            let status = json!({"status": {"observedGeneration": s.metadata.generation, "replicas": 1,
                "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1, "currentReplicas": 1}});
            self.api::<StatefulSet>()
                .patch_status(&s.name_any(), &PatchParams::default(), &Patch::Merge(status))
                .await
                .unwrap();
        }
    }

    /// Creates the system and brings it to Ready: reconcile, the Job succeeds, reconcile, the
    /// workloads report ready, reconcile.
    async fn ready(&self) -> ChatSystem {
        let cs = self.reconcile().await;
        let job = cs.status.as_ref().unwrap().migration.as_ref().unwrap().job.clone();
        self.finish_job(&job, true).await;
        self.reconcile().await;
        self.mark_workloads_ready().await;
        let cs = self.reconcile().await;
        assert_eq!(condition(&cs, status::READY), ("True".into(), "AllComponentsReady".into()), "{:#?}", cs.status);
        cs
    }

    /// (reason, count) of every Event in the namespace, sorted.
    async fn events(&self) -> Vec<(String, i32)> {
        let api: Api<k8s_openapi::api::events::v1::Event> = self.api();
        let list = api.list(&ListParams::default()).await.unwrap();
        let mut events: Vec<(String, i32)> = list
            .iter()
            .map(|e| (e.reason.clone().unwrap_or_default(), e.series.as_ref().map_or(1, |s| s.count)))
            .collect();
        events.sort();
        events
    }

    /// resourceVersion of the ChatSystem and of every object in the namespace we create.
    async fn versions(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        out.insert("ChatSystem".into(), self.cs().await.resource_version().unwrap());
        macro_rules! each {
            ($($kind:ty),*) => {$(
                for o in self.api::<$kind>().list(&ListParams::default()).await.unwrap() {
                    out.insert(format!("{}/{}", stringify!($kind), o.name_any()), o.resource_version().unwrap());
                }
            )*};
        }
        each!(Secret, ConfigMap, Service, StatefulSet, Job, Deployment, Ingress, PersistentVolumeClaim, NetworkPolicy);
        out
    }
}

fn condition(cs: &ChatSystem, type_: &str) -> (String, String) {
    let c = status::condition(cs.status.as_ref(), type_).unwrap_or_else(|| panic!("no {type_} condition"));
    (c.status.clone(), c.reason.clone())
}

fn image(d: &Deployment) -> String {
    d.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0].image.clone().unwrap()
}

fn config_hash(d: &Deployment) -> String {
    d.spec.as_ref().unwrap().template.metadata.as_ref().unwrap().annotations.as_ref().unwrap()[CONFIG_HASH_ANNOTATION]
        .clone()
}

const SERVICES: [&str; 7] = ["gateway", "user", "friend", "file", "message", "transmit", "speech"];

#[tokio::test]
async fn creates_the_system_and_reports_its_status() {
    let Some(h) = Harness::new("create", json!({})).await else { return };

    // First pass: configuration, servers, Services and the migration Job; no Deployment until
    // the Job has succeeded.
    let cs = h.reconcile().await;
    let mut secrets: Vec<String> = SERVICES.iter().map(|s| format!("demo-{s}-tls")).collect();
    secrets.extend(["demo-connections", "demo-credentials", "demo-internal-ca"].map(String::from));
    secrets.sort();
    assert_eq!(h.names::<Secret>().await, secrets);
    assert_eq!(h.names::<ConfigMap>().await.iter().filter(|n| n.starts_with("demo")).count(), 1);
    assert_eq!(h.names::<StatefulSet>().await, ["demo-elasticsearch", "demo-mysql", "demo-rabbitmq", "demo-redis"]);
    let mut services: Vec<String> = SERVICES.iter().map(|s| format!("demo-{s}")).collect();
    services
        .extend(["demo-elasticsearch", "demo-mysql", "demo-public", "demo-rabbitmq", "demo-redis"].map(String::from));
    services.sort();
    assert_eq!(h.names::<Service>().await, services);
    assert_eq!(h.names::<PersistentVolumeClaim>().await, ["demo-files"]);
    assert!(h.names::<Deployment>().await.is_empty());
    let jobs = h.names::<Job>().await;
    assert_eq!(jobs.len(), 1);
    assert!(jobs[0].starts_with("demo-migrate-"));
    let st = cs.status.clone().unwrap();
    assert_eq!(st.observed_generation, cs.metadata.generation);
    assert_eq!(condition(&cs, status::PROGRESSING), ("True".into(), "MigrationRunning".into()));
    assert_eq!(condition(&cs, status::READY).0, "False");
    assert_eq!(condition(&cs, status::DEGRADED).0, "False");
    assert_eq!(st.gateway_endpoint.as_deref(), Some(format!("demo-public.{}.svc:9000", h.ns).as_str()));

    // Passwords are kept across passes (read back, not regenerated).
    let creds = h.get::<Secret>("demo-credentials").await.unwrap().data;

    // The Job succeeds (written by the test: no Job controller here): the Deployments appear.
    h.finish_job(&jobs[0], true).await;
    let cs = h.reconcile().await;
    assert_eq!(h.names::<Deployment>().await.len(), 7);
    for svc in SERVICES {
        let d = h.get::<Deployment>(&format!("demo-{svc}")).await.unwrap();
        assert_eq!(image(&d), "ghcr.io/chatmesh/chatmesh:0.9.0");
    }
    assert_eq!(condition(&cs, status::PROGRESSING), ("True".into(), "RollingOut".into()));
    assert_eq!(h.get::<Secret>("demo-credentials").await.unwrap().data, creds);

    // Readiness comes from workload status, written here as the controllers would.
    h.mark_workloads_ready().await;
    let cs = h.reconcile().await;
    let st = cs.status.clone().unwrap();
    assert_eq!(condition(&cs, status::READY), ("True".into(), "AllComponentsReady".into()));
    assert_eq!(condition(&cs, status::PROGRESSING), ("False".into(), "RolloutComplete".into()));
    assert_eq!(st.version.as_deref(), Some("0.9.0"));
    assert_eq!(st.components.len(), 11);
    assert!(st.components.values().all(|c| c.ready_replicas == c.replicas));

    // The passes so far told what they did in Events.
    let events = h.events().await;
    for reason in ["CreatedSecret", "CreatedDeployment", "CreatedJob", "AllComponentsReady"] {
        assert!(events.iter().any(|(r, _)| r == reason), "no {reason} event among {events:?}");
    }
    // One event per child, not one series for all: the seven Deployments are seven events.
    let created: Vec<_> = events.iter().filter(|(r, _)| r == "CreatedDeployment").collect();
    assert_eq!(created.len(), 7, "{events:?}");
    assert!(created.iter().all(|(_, count)| *count == 1), "{events:?}");

    // Steady state: another pass writes nothing at all, not even an Event.
    let before = h.versions().await;
    let again = h.reconcile().await;
    assert_eq!(h.versions().await, before, "a pass with nothing to do wrote something");
    assert_eq!(again.status, cs.status);
    assert_eq!(h.events().await, events);

    // Every child is labelled and controlled by the ChatSystem.
    let uid = cs.uid().unwrap();
    let labelled = ListParams::default().labels(&format!("{LABEL_INSTANCE}=demo,{LABEL_MANAGED_BY}={MANAGER}"));
    let deps = h.api::<Deployment>().list(&labelled).await.unwrap();
    assert_eq!(deps.items.len(), 7);
    assert!(deps.iter().all(|d| d.owner_references().iter().any(|o| o.uid == uid && o.controller == Some(true))));
}

#[tokio::test]
async fn follows_changes_to_replicas_configuration_and_image() {
    let Some(h) = Harness::new("update", json!({})).await else { return };
    h.ready().await;
    let gateway = h.get::<Deployment>("demo-gateway").await.unwrap();
    let old_hash = config_hash(&gateway);

    // Replicas: only that Deployment changes; the config hash does not.
    h.patch_spec(json!({"services": {"gateway": {"replicas": 3}}})).await;
    let cs = h.reconcile().await;
    let gateway = h.get::<Deployment>("demo-gateway").await.unwrap();
    assert_eq!(gateway.spec.as_ref().unwrap().replicas, Some(3));
    assert_eq!(config_hash(&gateway), old_hash);
    assert_eq!(cs.status.as_ref().unwrap().components["gateway"].replicas, 3);
    assert_eq!(condition(&cs, status::READY).0, "False", "3 wanted, 1 ready");

    // Configuration: the ConfigMap changes and every pod template's hash with it.
    let secret: Secret = serde_json::from_value(json!({"metadata": {"name": "aliyun"},
        "stringData": {"accessKeyId": "id", "accessKeySecret": "secret"}}))
    .unwrap();
    h.api::<Secret>().create(&PostParams::default(), &secret).await.unwrap();
    h.patch_spec(json!({"sms": {"provider": "aliyun", "signName": "Chat", "templateCode": "SMS_1",
        "credentialsSecret": "aliyun"}}))
        .await;
    h.reconcile().await;
    let cm = h.get::<ConfigMap>("demo-config").await.unwrap().data.unwrap();
    assert_eq!(cm["CHATMESH_SMS_PROVIDER"], "aliyun");
    assert_eq!(cm["CHATMESH_ALIYUN_SIGN_NAME"], "Chat");
    for svc in SERVICES {
        let d = h.get::<Deployment>(&format!("demo-{svc}")).await.unwrap();
        assert_ne!(config_hash(&d), old_hash, "{svc} would not roll");
    }

    // Image: a new migration Job; the Deployments keep the old image until it succeeds.
    let old_job = h.cs().await.status.unwrap().migration.unwrap().job;
    h.patch_spec(json!({"image": {"tag": "1.0.0"}})).await;
    let cs = h.reconcile().await;
    let new_job = cs.status.as_ref().unwrap().migration.as_ref().unwrap().job.clone();
    assert_ne!(new_job, old_job);
    let job = h.get::<Job>(&new_job).await.unwrap();
    let job_image = job.spec.unwrap().template.spec.unwrap().containers[0].image.clone().unwrap();
    assert_eq!(job_image, "ghcr.io/chatmesh/chatmesh:1.0.0");
    for svc in SERVICES {
        assert_eq!(
            image(&h.get::<Deployment>(&format!("demo-{svc}")).await.unwrap()),
            "ghcr.io/chatmesh/chatmesh:0.9.0"
        );
    }
    assert_eq!(condition(&cs, status::PROGRESSING), ("True".into(), "MigrationRunning".into()));
    assert_eq!(cs.status.as_ref().unwrap().version.as_deref(), Some("0.9.0"));

    // Still running after another pass: still held.
    h.reconcile().await;
    assert_eq!(image(&h.get::<Deployment>("demo-user").await.unwrap()), "ghcr.io/chatmesh/chatmesh:0.9.0");

    // The Job succeeds: everything rolls to 1.0.0 and the old Job goes.
    h.finish_job(&new_job, true).await;
    h.reconcile().await;
    for svc in SERVICES {
        assert_eq!(
            image(&h.get::<Deployment>(&format!("demo-{svc}")).await.unwrap()),
            "ghcr.io/chatmesh/chatmesh:1.0.0"
        );
    }
    assert_eq!(h.names::<Job>().await, [new_job]);
    h.mark_workloads_ready().await;
    let cs = h.reconcile().await;
    assert_eq!(cs.status.as_ref().unwrap().version.as_deref(), Some("1.0.0"));
    assert_eq!(condition(&cs, status::READY).0, "True");
}

#[tokio::test]
async fn a_failed_migration_keeps_the_old_image_and_degrades() {
    let Some(h) = Harness::new("failmig", json!({})).await else { return };
    h.ready().await;
    h.patch_spec(json!({"image": {"tag": "2.0.0"}})).await;
    let cs = h.reconcile().await;
    let job = cs.status.unwrap().migration.unwrap().job;
    h.finish_job(&job, false).await;
    let cs = h.reconcile().await;
    assert_eq!(condition(&cs, status::DEGRADED), ("True".into(), "MigrationFailed".into()));
    assert_eq!(condition(&cs, status::PROGRESSING), ("False".into(), "MigrationFailed".into()));
    assert_eq!(condition(&cs, status::READY).0, "True", "the old version still serves");
    assert_eq!(image(&h.get::<Deployment>("demo-gateway").await.unwrap()), "ghcr.io/chatmesh/chatmesh:0.9.0");
}

#[tokio::test]
async fn switching_a_dependency_to_external_removes_the_managed_one() {
    let Some(h) = Harness::new("external", json!({})).await else { return };
    h.ready().await;
    assert!(h.get::<StatefulSet>("demo-mysql").await.is_some());

    // A Secret that does not exist: refused with a clear reason, nothing removed.
    h.patch_spec(json!({"mysql": {"managed": null, "external": {"urlSecret": {"name": "prod-db"}}}})).await;
    let cs = h.reconcile().await;
    assert_eq!(condition(&cs, status::DEGRADED), ("True".into(), "InvalidSpec".into()));
    let message = status::condition(cs.status.as_ref(), status::DEGRADED).unwrap().message.clone();
    assert_eq!(message, r#"spec.mysql.external.urlSecret: Secret "prod-db" not found"#);
    assert!(h.get::<StatefulSet>("demo-mysql").await.is_some());

    // The Secret appears: the managed MySQL goes, the services read the external URL.
    let secret: Secret = serde_json::from_value(json!({"metadata": {"name": "prod-db"},
        "stringData": {"url": "mysql://u:p@db.example.com:3306/chat"}}))
    .unwrap();
    h.api::<Secret>().create(&PostParams::default(), &secret).await.unwrap();
    let cs = h.reconcile().await;
    assert_eq!(condition(&cs, status::DEGRADED).0, "False");
    assert!(h.get::<StatefulSet>("demo-mysql").await.is_none());
    assert!(h.get::<Service>("demo-mysql").await.is_none());
    assert!(!cs.status.as_ref().unwrap().components.contains_key("mysql"));
    let urls = h.get::<Secret>("demo-connections").await.unwrap().data.unwrap();
    assert!(!urls.contains_key("database-url"));
    // The password stays, for the data of a MySQL switched back to managed.
    assert!(h.get::<Secret>("demo-credentials").await.unwrap().data.unwrap().contains_key("mysql-password"));
    // Switching the database changes the migration Job (new template, new name).
    let job = cs.status.as_ref().unwrap().migration.as_ref().unwrap().job.clone();
    let job_env = h.get::<Job>(&job).await.unwrap().spec.unwrap().template.spec.unwrap().containers[0].env.clone();
    let db = job_env.unwrap().into_iter().find(|e| e.name == "CHATMESH_DATABASE_URL").unwrap();
    assert_eq!(db.value_from.unwrap().secret_key_ref.unwrap().name, "prod-db");
    h.finish_job(&job, true).await;
    h.reconcile().await;
    let user = h.get::<Deployment>("demo-user").await.unwrap();
    let env = user.spec.unwrap().template.spec.unwrap().containers[0].env.clone().unwrap();
    let db = env.into_iter().find(|e| e.name == "CHATMESH_DATABASE_URL").unwrap();
    let sel = db.value_from.unwrap().secret_key_ref.unwrap();
    assert_eq!((sel.name.as_str(), sel.key.as_str()), ("prod-db", "url"));
}

#[tokio::test]
async fn every_child_is_owned_for_garbage_collection() {
    let Some(h) = Harness::new("owners", json!({"gateway": {"ingress": {"host": "chat.example.com"}}})).await else {
        return;
    };
    let cs = h.ready().await;
    let uid = cs.uid().unwrap();
    h.api::<ChatSystem>().delete(&h.name, &DeleteParams::default()).await.unwrap();
    assert!(h.api::<ChatSystem>().get_opt(&h.name).await.unwrap().is_none());

    // This control plane runs no garbage collector (it is part of kube-controller-manager), so
    // the children are still here; a real cluster deletes them because each names the
    // ChatSystem as its controlling owner, which is what this checks.
    let mut count = 0;
    macro_rules! owned {
        ($($kind:ty),*) => {$(
            for o in h.api::<$kind>().list(&ListParams::default()).await.unwrap() {
                if o.name_any().starts_with("kube-root-ca") { continue; } // the API server's own
                // Retention Retain (the default): the data outlives the ChatSystem.
                if ["demo-credentials", "demo-files"].contains(&o.name_any().as_str()) {
                    assert!(o.owner_references().is_empty(), "{} {}", stringify!($kind), o.name_any());
                    continue;
                }
                let owner = o.owner_references().iter().find(|r| r.uid == uid)
                    .unwrap_or_else(|| panic!("{} {} has no owner reference", stringify!($kind), o.name_any()));
                assert_eq!((owner.kind.as_str(), owner.controller, owner.block_owner_deletion),
                    ("ChatSystem", Some(true), Some(true)), "{} {}", stringify!($kind), o.name_any());
                count += 1;
            }
        )*};
    }
    owned!(Secret, ConfigMap, Service, StatefulSet, Job, Deployment, Ingress, NetworkPolicy);
    // PVCs made by StatefulSets' claim templates would belong to the StatefulSets; none
    // exist here (no StatefulSet controller), so the only claim is the files volume.
    owned!(PersistentVolumeClaim);
    // Secrets: connections, the internal CA, 7 certificates; NetworkPolicies: default deny,
    // 7 services, 4 servers.
    assert_eq!(count, 2 + 7 + 1 + 12 + 4 + 1 + 7 + 1 + 12);
}

#[tokio::test]
async fn invalid_specs_are_refused_by_the_api_server() {
    let Some(client) = client().await else { return };
    let ns = namespace(&client, "invalid").await;
    // Untyped, so that values the Rust types could not even hold reach the API server.
    let resource = ApiResource::erase::<ChatSystem>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &resource);
    let cases = [
        (
            json!({"mysql": {"managed": {}, "external": {"urlSecret": {"name": "db"}}}}),
            "set exactly one of managed or external",
        ),
        (json!({"redis": {}}), "set exactly one of managed or external"),
        (json!({"services": {"user": {"replicas": 101}}}), "should be less than or equal to 100"),
        (json!({"services": {"user": {"replicas": -1}}}), "should be greater than or equal to 0"),
        (json!({"image": {"pullPolicy": "Sometimes"}}), "supported values: \"Always\", \"IfNotPresent\", \"Never\""),
        (json!({"image": {"tag": "not a tag"}}), "spec.image.tag in body should match"),
        (json!({"speech": {"provider": "baidu"}}), "speech providers baidu and openai need credentialsSecret"),
        (
            json!({"sms": {"provider": "aliyun", "credentialsSecret": "x"}}),
            "needs credentialsSecret, signName and templateCode",
        ),
        (json!({"gateway": {"service": {"httpNodePort": 30000}}}), "need type NodePort or LoadBalancer"),
        (
            json!({"gateway": {"service": {"type": "NodePort", "httpNodePort": 80}}}),
            "should be greater than or equal to 30000",
        ),
        (json!({"gateway": {"ingress": {"host": "Not_A_Host"}}}), "spec.gateway.ingress.host in body should match"),
        (json!({"files": {"existingClaim": "c", "size": "1Gi"}}), "existingClaim cannot be combined with size"),
        (
            json!({"mysql": {"managed": {"storage": {"size": "lots"}}}}),
            "spec.mysql.managed.storage.size in body should match",
        ),
        (json!({"internalTls": {"mode": "secret"}}), "secret is required with mode secret and allowed only then"),
        (
            json!({"internalTls": {"secret": {"name": "certs"}}}),
            "secret is required with mode secret and allowed only then",
        ),
        (json!({"internalTls": {"mode": "sometimes"}}), "supported values: \"operator\", \"secret\", \"disabled\""),
        (
            json!({"internalTls": {"mode": "disabled", "certificateLifetime": "1d"}}),
            "certificateLifetime applies only to mode operator",
        ),
        (
            json!({"internalTls": {"certificateLifetime": "90 days"}}),
            "spec.internalTls.certificateLifetime in body should match",
        ),
        (
            json!({"internalTls": {"mode": "secret", "secret": {"name": "a", "services": {"gateway": "g", "user": "u",
                "friend": "f", "file": "f", "message": "m", "transmit": "t", "speech": "s"}}}}),
            "set exactly one of name or services",
        ),
        (
            json!({"internalTls": {"mode": "secret", "secret": {"services": {"gateway": "g"}}}}),
            "spec.internalTls.secret.services.user: Required value",
        ),
        (
            json!({"services": {"user": {"podLabels": {"app.kubernetes.io/component": "x"}}}}),
            "podLabels cannot set the operator's",
        ),
        (
            json!({"services": {"gateway": {"podAnnotations": {"chatmesh.io/config-hash": "x"}}}}),
            "podAnnotations cannot set chatmesh.io/config-hash",
        ),
        (json!({"networkPolicy": {"enabled": "yes"}}), "spec.networkPolicy.enabled: Invalid value"),
        (json!({"services": {"user": {"podLabels": {"bad key!": "x"}}}}), "label keys must be [prefix/]name"),
        (
            json!({"services": {"user": {"podLabels": {"team": "not a value"}}}}),
            "spec.services.user.podLabels.team in body should match",
        ),
        (json!({"services": {"user": {"podLabels": {"team": "x".repeat(64)}}}}), "may not be more than 63"),
        (
            json!({"services": {"user": {"podAnnotations": {"Bad_Prefix/x": "x"}}}}),
            "annotation keys must be [prefix/]name",
        ),
    ];
    for (i, (spec, expected)) in cases.into_iter().enumerate() {
        let cs: DynamicObject = serde_json::from_value(json!({"apiVersion": "chatmesh.io/v1alpha1",
            "kind": "ChatSystem", "metadata": {"name": format!("bad-{i}")}, "spec": spec}))
        .unwrap();
        let err = api.create(&PostParams::default(), &cs).await.expect_err(&format!("case {i} ({spec}) was accepted"));
        let kube::Error::Api(status) = err else { panic!("case {i}: {err}") };
        assert_eq!(status.code, 422, "case {i}");
        assert!(status.message.contains(expected), "case {i}: {:?} lacks {expected:?}", status.message);
    }
    // A name too long for the children's names.
    let cs = ChatSystem::new(&"x".repeat(33), Default::default());
    let typed: Api<ChatSystem> = Api::namespaced(client, &ns);
    let err = typed.create(&PostParams::default(), &cs).await.unwrap_err();
    assert!(err.to_string().contains("metadata.name must be at most 32 characters"), "{err}");
}

#[tokio::test]
async fn paused_changes_nothing() {
    let Some(h) = Harness::new("paused", json!({})).await else { return };
    h.ready().await;
    h.patch_spec(json!({"paused": true, "services": {"gateway": {"replicas": 4}}})).await;
    let cs = h.reconcile().await;
    assert_eq!(condition(&cs, status::PROGRESSING), ("False".into(), "ReconciliationPaused".into()));
    assert_eq!(h.get::<Deployment>("demo-gateway").await.unwrap().spec.unwrap().replicas, Some(1));
    h.patch_spec(json!({"paused": false})).await;
    h.reconcile().await;
    assert_eq!(h.get::<Deployment>("demo-gateway").await.unwrap().spec.unwrap().replicas, Some(4));
}

#[tokio::test]
async fn drift_is_undone() {
    let Some(h) = Harness::new("drift", json!({})).await else { return };
    h.ready().await;
    // Someone edits a child by hand (another field manager): the next pass restores it.
    let patch = Patch::Merge(json!({"data": {"CHATMESH_LOG_FORMAT": "text"}}));
    h.api::<ConfigMap>().patch("demo-config", &PatchParams::default(), &patch).await.unwrap();
    h.api::<Service>().delete("demo-user", &DeleteParams::default()).await.unwrap();
    // `kubectl scale --replicas=0` (the scale subresource; the README's restore path does it).
    let scale = Patch::Merge(json!({"spec": {"replicas": 0}}));
    h.api::<Deployment>().patch_scale("demo-gateway", &PatchParams::default(), &scale).await.unwrap();
    h.reconcile().await;
    assert_eq!(h.get::<ConfigMap>("demo-config").await.unwrap().data.unwrap()["CHATMESH_LOG_FORMAT"], "json");
    assert!(h.get::<Service>("demo-user").await.is_some());
    assert_eq!(h.get::<Deployment>("demo-gateway").await.unwrap().spec.unwrap().replicas, Some(1));
}

/// (tls.crt, tls.key, ca.crt) of a Secret, as text.
async fn tls_files(h: &Harness, name: &str) -> (String, String, String) {
    let data = h.get::<Secret>(name).await.unwrap_or_else(|| panic!("no Secret {name}")).data.unwrap();
    let text = |key: &str| String::from_utf8(data[key].0.clone()).unwrap();
    (text("tls.crt"), text("tls.key"), text("ca.crt"))
}

fn der(pem: &str) -> Vec<u8> {
    x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()).next().unwrap().unwrap().contents
}

/// Checks a service certificate chains to `ca_pem` and names the service; returns its expiry.
fn check_cert(cert_pem: &str, ca_pem: &str, ns: &str, svc: &str) -> time::OffsetDateTime {
    let (cert_der, ca_der) = (der(cert_pem), der(ca_pem));
    let (_, cert) = x509_parser::parse_x509_certificate(&cert_der).unwrap();
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
    cert.verify_signature(Some(ca.public_key())).unwrap_or_else(|e| panic!("{svc}: not signed by the CA: {e}"));
    let names = chatmesh_operator::tls::names(&cert);
    for want in [
        format!("demo-{svc}"),
        format!("demo-{svc}.{ns}"),
        format!("demo-{svc}.{ns}.svc"),
        format!("demo-{svc}.{ns}.svc.cluster.local"),
        format!("spiffe://chatmesh.io/service/{svc}"),
    ] {
        assert!(names.contains(&want), "{svc}: {want} not among {names:?}");
    }
    assert_eq!(names.len(), 5, "{svc}: {names:?}");
    cert.validity().not_after.to_datetime()
}

#[tokio::test]
async fn internal_ca_and_certificates_are_kept_and_rotated() {
    // A short lifetime: renewal is due 30 s after issue (a third, 15 s, left), room enough for
    // the passes before it on a busy machine.
    let spec = json!({"internalTls": {"certificateLifetime": "45s"}});
    let Some(h) = Harness::new("tls", spec).await else { return };
    let metrics = chatmesh_operator::metrics::handle();
    h.ready().await;
    let ca = tls_files(&h, "demo-internal-ca").await;
    assert_eq!(ca.0, ca.2, "the CA trusts itself");
    let mut first = BTreeMap::new();
    let mut expiry = None;
    for svc in SERVICES {
        let files = tls_files(&h, &format!("demo-{svc}-tls")).await;
        assert_eq!(files.2, ca.0);
        let not_after = check_cert(&files.0, &ca.0, &h.ns, svc);
        expiry = expiry.min(Some(not_after)).or(Some(not_after));
        first.insert(svc, files);
        // Mounted as a directory, pointed at by the three variables.
        let d = h.get::<Deployment>(&format!("demo-{svc}")).await.unwrap();
        let pod = d.spec.unwrap().template.spec.unwrap();
        let volume = pod.volumes.unwrap().into_iter().find(|v| v.name == "internal-tls").unwrap();
        assert_eq!(volume.secret.unwrap().secret_name, Some(format!("demo-{svc}-tls")));
        let c = &pod.containers[0];
        let mount = c.volume_mounts.as_ref().unwrap().iter().find(|m| m.name == "internal-tls").unwrap();
        assert_eq!((mount.mount_path.as_str(), mount.sub_path.as_ref()), ("/etc/chatmesh/tls", None));
        let env: BTreeMap<_, _> = c.env.as_ref().unwrap().iter().map(|e| (e.name.clone(), e.value.clone())).collect();
        assert_eq!(env["CHATMESH_TLS_CA"].as_deref(), Some("/etc/chatmesh/tls/ca.crt"));
    }

    // Another pass, before any renewal is due: the very same CA and certificates, and the next
    // pass is asked for in time for the renewal (not after the 300 s resync).
    let action = reconcile::reconcile(Arc::new(h.cs().await), h.ctx.clone()).await.unwrap();
    let requeue = requeue_secs(&action);
    assert!(requeue > 0.0 && requeue <= 30.0, "{action:?}");
    assert_eq!(tls_files(&h, "demo-internal-ca").await, ca);
    for svc in SERVICES {
        assert_eq!(tls_files(&h, &format!("demo-{svc}-tls")).await, first[svc], "{svc} renewed too early");
    }

    // Past the renewal point (15 s before expiry): new certificates, the same CA, no pod roll.
    let hashes: Vec<String> = {
        let mut v = vec![];
        for svc in SERVICES {
            v.push(config_hash(&h.get::<Deployment>(&format!("demo-{svc}")).await.unwrap()));
        }
        v
    };
    let due = expiry.unwrap() - Duration::from_secs(15) + Duration::from_millis(500);
    let wait = (due - time::OffsetDateTime::now_utc()).try_into().unwrap_or(Duration::ZERO);
    tokio::time::sleep(wait).await;
    h.reconcile().await;
    assert_eq!(tls_files(&h, "demo-internal-ca").await, ca, "the CA never changes");
    for (i, svc) in SERVICES.into_iter().enumerate() {
        let renewed = tls_files(&h, &format!("demo-{svc}-tls")).await;
        assert_ne!(renewed.0, first[svc].0, "{svc} not renewed");
        assert_ne!(renewed.1, first[svc].1, "{svc}: a new key too");
        let not_after = check_cert(&renewed.0, &ca.0, &h.ns, svc);
        assert!(not_after > expiry.unwrap(), "{svc}");
        let d = h.get::<Deployment>(&format!("demo-{svc}")).await.unwrap();
        assert_eq!(config_hash(&d), hashes[i], "{svc}: a renewal must not restart the pods");
    }

    let rendered = metrics.render();
    assert!(rendered.contains(r#"chatmesh_operator_certificates_issued_total{reason="expiring"}"#), "{rendered}");

    // The CA is found by name: one that lost its labels is adopted, not replaced.
    let patch = Patch::Merge(json!({"metadata": {"labels": null}}));
    h.api::<Secret>().patch("demo-internal-ca", &PatchParams::default(), &patch).await.unwrap();
    h.reconcile().await;
    assert_eq!(tls_files(&h, "demo-internal-ca").await, ca);

    // A broken CA is reported, never silently replaced (every service trusts it).
    let broken = Patch::Merge(json!({"stringData": {"tls.key": "junk"}}));
    h.api::<Secret>().patch("demo-internal-ca", &PatchParams::default(), &broken).await.unwrap();
    let err = reconcile::reconcile(Arc::new(h.cs().await), h.ctx.clone()).await.unwrap_err();
    assert!(err.to_string().contains("demo-internal-ca holds no usable CA"), "{err}");
    assert_eq!(condition(&h.cs().await, status::DEGRADED).0, "True");
    assert_eq!(tls_files(&h, "demo-internal-ca").await.0, ca.0);
}

#[tokio::test]
async fn an_existing_ca_is_adopted() {
    let Some(h) = Harness::new("adopt", json!({})).await else { return };
    // A CA of the user's own, there before the ChatSystem's first pass (an Opaque Secret
    // without ca.crt): kept as it is, type included, and every certificate signed by it.
    let ca = chatmesh_operator::tls::new_ca("theirs", "elsewhere", time::OffsetDateTime::now_utc()).unwrap();
    let secret: Secret = serde_json::from_value(json!({"metadata": {"name": "demo-internal-ca"}, "type": "Opaque",
        "stringData": {"tls.crt": ca.cert_pem, "tls.key": ca.key_pem}}))
    .unwrap();
    h.api::<Secret>().create(&PostParams::default(), &secret).await.unwrap();
    h.reconcile().await;
    let stored = h.get::<Secret>("demo-internal-ca").await.unwrap();
    assert_eq!(stored.type_.as_deref(), Some("Opaque"));
    let (cert, key, trusted) = tls_files(&h, "demo-internal-ca").await;
    assert_eq!(
        (cert.as_str(), key.as_str(), trusted.as_str()),
        (ca.cert_pem.as_str(), ca.key_pem.as_str(), ca.cert_pem.as_str())
    );
    for svc in SERVICES {
        let files = tls_files(&h, &format!("demo-{svc}-tls")).await;
        check_cert(&files.0, &ca.cert_pem, &h.ns, svc);
    }
    // Now the operator's: labelled and owned, so it goes with the ChatSystem.
    assert_eq!(stored.labels()[LABEL_MANAGED_BY], MANAGER);
    assert!(stored.owner_references().iter().any(|o| o.controller == Some(true)));
}

/// The requeue delay of an Action, in seconds (kube keeps the field private; its Debug shows it).
fn requeue_secs(action: &kube::runtime::controller::Action) -> f64 {
    let text = format!("{action:?}");
    let inner = text.split("Some(").nth(1).and_then(|t| t.split(')').next()).unwrap_or_else(|| panic!("{text}"));
    let (number, scale) = if let Some(ms) = inner.strip_suffix("ms") {
        (ms, 1e-3)
    } else if let Some(us) = inner.strip_suffix("µs") {
        (us, 1e-6)
    } else {
        (inner.strip_suffix('s').unwrap_or_else(|| panic!("{text}")), 1.0)
    };
    number.parse::<f64>().unwrap_or_else(|_| panic!("{text}")) * scale
}

#[tokio::test]
async fn network_policies_guard_every_port() {
    // Accepted label and annotation shapes (a prefixed key, an empty value).
    let spec = json!({"services": {"user": {"podLabels": {"sidecar.istio.io/inject": "true", "team": ""},
        "podAnnotations": {"linkerd.io/inject": "enabled", "note": "free text, any length"}}}});
    let Some(h) = Harness::new("netpol", spec).await else { return };
    // Certificates of 90 days: nothing due before the regular resync.
    let action = reconcile::reconcile(Arc::new(h.cs().await), h.ctx.clone()).await.unwrap();
    assert_eq!(requeue_secs(&action), 300.0);
    let mut names: Vec<String> = SERVICES.iter().map(|s| format!("demo-{s}")).collect();
    names.extend(
        ["demo-default-deny", "demo-elasticsearch", "demo-mysql", "demo-rabbitmq", "demo-redis"].map(String::from),
    );
    names.sort();
    assert_eq!(h.names::<NetworkPolicy>().await, names);

    // As stored by the API server: the selectors and ports of a few.
    let spec = |p: NetworkPolicy| serde_json::to_value(p.spec.unwrap()).unwrap();
    let deny = spec(h.get::<NetworkPolicy>("demo-default-deny").await.unwrap());
    assert_eq!(
        deny,
        json!({"podSelector": {"matchLabels": {"app.kubernetes.io/instance": "demo", "app.kubernetes.io/name": "chatmesh"}},
            "policyTypes": ["Ingress"]})
    );
    let user = spec(h.get::<NetworkPolicy>("demo-user").await.unwrap());
    assert_eq!(user["podSelector"]["matchLabels"]["app.kubernetes.io/component"], "user");
    let rule = &user["ingress"][0];
    assert_eq!(rule["ports"], json!([{"port": 10003, "protocol": "TCP"}]));
    assert_eq!(
        rule["from"][0]["podSelector"]["matchExpressions"],
        json!([{"key": "app.kubernetes.io/component", "operator": "In", "values": ["gateway", "friend", "transmit", "message"]}])
    );
    assert_eq!(
        user["ingress"][1],
        json!({"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
            "ports": [{"port": 9100, "protocol": "TCP"}]})
    );
    let gateway = spec(h.get::<NetworkPolicy>("demo-gateway").await.unwrap());
    assert_eq!(
        gateway["ingress"][0],
        json!({"ports": [{"port": 9000, "protocol": "TCP"}, {"port": 9001, "protocol": "TCP"}]})
    );
    let mysql = spec(h.get::<NetworkPolicy>("demo-mysql").await.unwrap());
    assert_eq!(
        mysql["ingress"][0]["from"][0]["podSelector"]["matchExpressions"][0]["values"],
        json!(["user", "friend", "file", "message", "transmit", "migrate", "backup"])
    );

    // Peers from the spec; then switched off: every policy goes.
    h.patch_spec(json!({"networkPolicy": {"gatewayFrom": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}})).await;
    h.reconcile().await;
    let gateway = spec(h.get::<NetworkPolicy>("demo-gateway").await.unwrap());
    assert_eq!(gateway["ingress"][0]["from"], json!([{"ipBlock": {"cidr": "10.0.0.0/8"}}]));
    h.patch_spec(json!({"networkPolicy": {"enabled": false}})).await;
    h.reconcile().await;
    assert!(h.names::<NetworkPolicy>().await.is_empty());
}

#[tokio::test]
async fn secret_and_disabled_tls_modes_make_no_ca() {
    let spec = json!({"internalTls": {"mode": "secret", "secret": {"name": "mesh-certs"}}});
    let Some(h) = Harness::new("tlsmodes", spec).await else { return };
    // The Secret is missing: named in the status, nothing applied.
    let cs = h.reconcile().await;
    assert_eq!(condition(&cs, status::DEGRADED), ("True".into(), "InvalidSpec".into()));
    let message = status::condition(cs.status.as_ref(), status::DEGRADED).unwrap().message.clone();
    assert!(message.contains(r#"spec.internalTls.secret.name: Secret "mesh-certs" not found"#), "{message}");
    assert!(h.names::<Secret>().await.is_empty());

    // The user's Secret, with real certificates for every service.
    let now = time::OffsetDateTime::now_utc();
    let made = chatmesh_operator::tls::ensure("demo", &h.ns, None, &BTreeMap::new(), Duration::from_secs(86400), now);
    let made = made.unwrap().material;
    let mut data = BTreeMap::from([("ca.crt".to_string(), made.trusted_pem.clone())]);
    for (component, cert) in &made.services {
        data.insert(format!("{}.crt", component.name()), cert.cert_pem.clone());
        data.insert(format!("{}.key", component.name()), cert.key_pem.clone());
    }
    // First with the gateway's certificate in user's place: refused before anything is applied.
    let mut swapped = data.clone();
    swapped.insert("user.crt".into(), data["gateway.crt"].clone());
    swapped.insert("user.key".into(), data["gateway.key"].clone());
    let secret: Secret =
        serde_json::from_value(json!({"metadata": {"name": "mesh-certs"}, "stringData": swapped})).unwrap();
    h.api::<Secret>().create(&PostParams::default(), &secret).await.unwrap();
    let cs = h.reconcile().await;
    let message = status::condition(cs.status.as_ref(), status::DEGRADED).unwrap().message.clone();
    assert!(
        message.contains(
            "(user.crt, user.key and ca.crt): the certificate does not name spiffe://chatmesh.io/service/user"
        ),
        "{message}"
    );
    assert_eq!(h.names::<Secret>().await, ["mesh-certs"]);
    let secret: Secret =
        serde_json::from_value(json!({"metadata": {"name": "mesh-certs"}, "stringData": data})).unwrap();
    h.api::<Secret>().replace("mesh-certs", &PostParams::default(), &secret).await.unwrap();
    h.ready().await;
    assert_eq!(h.names::<Secret>().await, ["demo-connections", "demo-credentials", "mesh-certs"], "no CA made");
    let d = h.get::<Deployment>("demo-user").await.unwrap();
    let pod = d.spec.unwrap().template.spec.unwrap();
    let source = pod.volumes.unwrap().into_iter().find(|v| v.name == "internal-tls").unwrap().secret.unwrap();
    assert_eq!(source.secret_name.as_deref(), Some("mesh-certs"));
    let items: Vec<(String, String)> = source.items.unwrap().into_iter().map(|i| (i.key, i.path)).collect();
    assert_eq!(
        items,
        [("ca.crt", "ca.crt"), ("user.crt", "tls.crt"), ("user.key", "tls.key")].map(|(k, p)| (k.into(), p.into()))
    );
    // The user's Secret is theirs: never labelled, owned or changed by the operator.
    let theirs = h.get::<Secret>("mesh-certs").await.unwrap();
    assert!(theirs.owner_references().is_empty());

    // Disabled: no certificate mounted, no TLS variable, still no CA.
    h.patch_spec(json!({"internalTls": {"mode": "disabled", "secret": null}})).await;
    h.reconcile().await;
    for svc in SERVICES {
        let d = h.get::<Deployment>(&format!("demo-{svc}")).await.unwrap();
        let pod = d.spec.unwrap().template.spec.unwrap();
        assert!(pod.volumes.unwrap().iter().all(|v| v.name != "internal-tls"), "{svc}");
        assert!(pod.containers[0].env.as_ref().unwrap().iter().all(|e| !e.name.starts_with("CHATMESH_TLS_")), "{svc}");
    }
    assert!(h.get::<Secret>("demo-internal-ca").await.is_none());

    // Operator mode makes them; back to disabled removes them again (nothing uses them).
    h.patch_spec(json!({"internalTls": {"mode": "operator"}})).await;
    h.reconcile().await;
    assert!(h.get::<Secret>("demo-internal-ca").await.is_some());
    assert!(h.get::<Secret>("demo-user-tls").await.is_some());
    h.patch_spec(json!({"internalTls": {"mode": "disabled"}})).await;
    h.reconcile().await;
    assert!(h.get::<Secret>("demo-internal-ca").await.is_none());
    assert!(h.get::<Secret>("demo-user-tls").await.is_none());
}

/// Writes a ResourceQuota's status as the quota controller would (nothing used yet): the
/// quota admission refuses every pod while a quota has no status.
async fn quota_with_status(h: &Harness, hard: serde_json::Value) {
    use k8s_openapi::api::core::v1::ResourceQuota;
    let quota: ResourceQuota =
        serde_json::from_value(json!({"metadata": {"name": "compute"}, "spec": {"hard": hard}})).unwrap();
    h.api::<ResourceQuota>().create(&PostParams::default(), &quota).await.unwrap();
    let used: serde_json::Map<String, serde_json::Value> =
        hard.as_object().unwrap().keys().map(|k| (k.clone(), json!("0"))).collect();
    h.api::<ResourceQuota>()
        .patch_status(
            "compute",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"hard": hard, "used": used}})),
        )
        .await
        .unwrap();
    // Without a controller-manager the namespace has no default ServiceAccount, which the
    // ServiceAccount admission needs for a pod.
    let sa: k8s_openapi::api::core::v1::ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "default"}})).unwrap();
    h.api::<k8s_openapi::api::core::v1::ServiceAccount>().create(&PostParams::default(), &sa).await.unwrap();
}

/// Creates a pod from a pod template, as a Job, Deployment or StatefulSet controller would.
async fn pod_from(
    h: &Harness,
    name: &str,
    template: &k8s_openapi::api::core::v1::PodTemplateSpec,
) -> Result<(), kube::Error> {
    use k8s_openapi::api::core::v1::Pod;
    let mut meta = template.metadata.clone().unwrap_or_default();
    meta.name = Some(name.into());
    let pod = Pod { metadata: meta, spec: template.spec.clone(), ..Pod::default() };
    h.api::<Pod>().create(&PostParams::default(), &pod).await.map(|_| ())
}

#[tokio::test]
async fn a_namespace_with_a_resource_quota_admits_every_pod() {
    let Some(h) = Harness::new("quota", json!({})).await else { return };
    quota_with_status(
        &h,
        json!({"requests.cpu": "20", "requests.memory": "40Gi", "limits.cpu": "40", "limits.memory": "80Gi", "pods": "40"}),
    )
    .await;
    // The quota is real: a pod without requests and limits is refused.
    let bare: k8s_openapi::api::core::v1::PodTemplateSpec =
        serde_json::from_value(json!({"spec": {"containers": [{"name": "c", "image": "busybox"}]}})).unwrap();
    let refused = pod_from(&h, "bare", &bare).await.unwrap_err();
    assert!(refused.to_string().contains("must specify"), "{refused}");

    h.ready().await;
    assert_eq!(h.names::<Deployment>().await.len(), 7);
    assert_eq!(h.names::<StatefulSet>().await.len(), 4);
    // Every pod the system would run is admitted by the quota: the migration Job's first.
    let job = h.api::<Job>().list(&ListParams::default()).await.unwrap().items.remove(0);
    pod_from(&h, "migrate", &job.spec.unwrap().template).await.expect("the Job's pod is admitted");
    for d in h.api::<Deployment>().list(&ListParams::default()).await.unwrap() {
        pod_from(&h, &d.name_any(), &d.spec.unwrap().template).await.expect("a service's pod is admitted");
    }
    for s in h.api::<StatefulSet>().list(&ListParams::default()).await.unwrap() {
        // The StatefulSet controller adds the claim template's volume.
        let name = s.name_any();
        let mut template = s.spec.unwrap().template;
        let volume = json!({"name": "data", "persistentVolumeClaim": {"claimName": format!("data-{name}-0")}});
        template.spec.as_mut().unwrap().volumes = Some(vec![serde_json::from_value(volume).unwrap()]);
        pod_from(&h, &name, &template).await.expect("a server's pod is admitted");
    }
}

/// What the garbage collector would do after the ChatSystem `uid` is gone: delete everything
/// it owns (this control plane has no garbage collector).
async fn collect_garbage(h: &Harness, uid: &str) {
    macro_rules! each {
        ($($kind:ty),*) => {$(
            for o in h.api::<$kind>().list(&ListParams::default()).await.unwrap() {
                if o.owner_references().iter().any(|r| r.uid == uid) {
                    h.api::<$kind>().delete(&o.name_any(), &DeleteParams::default()).await.unwrap();
                }
            }
        )*};
    }
    each!(Secret, ConfigMap, Service, StatefulSet, Job, Deployment, Ingress, PersistentVolumeClaim, NetworkPolicy);
}

#[tokio::test]
async fn a_re_created_chat_system_keeps_its_credentials_and_volumes() {
    let Some(h) = Harness::new("retain", json!({})).await else { return };
    let cs = h.ready().await;
    let creds = h.get::<Secret>("demo-credentials").await.unwrap();
    assert!(creds.metadata.owner_references.is_none(), "Retain: the credentials outlive the ChatSystem");
    assert!(h.get::<PersistentVolumeClaim>("demo-files").await.unwrap().metadata.owner_references.is_none());
    let sts = h.get::<StatefulSet>("demo-mysql").await.unwrap();
    let policy = sts.spec.unwrap().persistent_volume_claim_retention_policy.unwrap();
    assert_eq!(policy.when_deleted.as_deref(), Some("Retain"));

    // Delete and re-create under the same name.
    h.api::<ChatSystem>().delete(&h.name, &DeleteParams::default()).await.unwrap();
    collect_garbage(&h, &cs.uid().unwrap()).await;
    assert!(h.get::<Deployment>("demo-gateway").await.is_none());
    let fresh: ChatSystem = serde_json::from_value(json!({
        "apiVersion": "chatmesh.io/v1alpha1", "kind": "ChatSystem", "metadata": {"name": h.name}, "spec": {},
    }))
    .unwrap();
    h.api::<ChatSystem>().create(&PostParams::default(), &fresh).await.unwrap();
    h.reconcile().await;
    assert_eq!(h.get::<Secret>("demo-credentials").await.unwrap().data, creds.data, "the passwords are adopted");
    assert_eq!(h.names::<PersistentVolumeClaim>().await, ["demo-files"]);

    // The Secret deleted by hand while MariaDB's data exists: no new password is made, and the
    // status says why.
    let claim: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": "data-demo-mysql-0", "labels": {LABEL_INSTANCE: "demo", LABEL_MANAGED_BY: MANAGER}},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }))
    .unwrap();
    h.api::<PersistentVolumeClaim>().create(&PostParams::default(), &claim).await.unwrap();
    h.api::<Secret>().delete("demo-credentials", &DeleteParams::default()).await.unwrap();
    let err = reconcile::reconcile(Arc::new(h.cs().await), h.ctx.clone()).await.unwrap_err();
    assert!(err.to_string().contains("data-demo-mysql-0"), "{err}");
    assert!(h.get::<Secret>("demo-credentials").await.is_none(), "no password was generated");
    let cs = h.cs().await;
    assert_eq!(condition(&cs, status::DEGRADED).0, "True");
    assert!(status::condition(cs.status.as_ref(), status::DEGRADED).unwrap().message.contains("mysql-password"));

    // Restored from a backup: the pass goes on with it.
    let restored = Secret {
        metadata: kube::api::ObjectMeta { name: Some("demo-credentials".into()), ..Default::default() },
        data: creds.data.clone(),
        ..Secret::default()
    };
    h.api::<Secret>().create(&PostParams::default(), &restored).await.unwrap();
    h.reconcile().await;
    assert_eq!(h.get::<Secret>("demo-credentials").await.unwrap().data, creds.data);
}

#[tokio::test]
async fn storage_edits_that_would_stop_every_pass_are_refused() {
    let Some(h) = Harness::new("immutable", json!({"rabbitmq": {"managed": {"storage": {"size": "2Gi"}}}})).await
    else {
        return;
    };
    let api = h.api::<ChatSystem>();
    let edit = |spec: serde_json::Value| {
        let api = api.clone();
        let name = h.name.clone();
        async move { api.patch(&name, &PatchParams::default(), &Patch::Merge(json!({ "spec": spec }))).await }
    };
    let refused = |result: Result<ChatSystem, kube::Error>, what: &str| {
        let err = result.expect_err(what).to_string();
        assert!(err.contains("cannot be changed"), "{what}: {err}");
        err
    };
    // An absent dependency is managed with the defaults: setting a size is a change. (The
    // CRD is applied again first, and its rules take a moment to apply.)
    reinstall_crd(&h.client).await;
    let mut result = edit(json!({"mysql": {"managed": {"storage": {"size": "20Gi"}}}})).await;
    for _ in 0..50 {
        if result.is_err() {
            break;
        }
        edit(json!({"mysql": null})).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        result = edit(json!({"mysql": {"managed": {"storage": {"size": "20Gi"}}}})).await;
    }
    let err = refused(result, "mysql size");
    assert!(err.contains("data-<name>-mysql-0"), "{err}");
    refused(edit(json!({"rabbitmq": {"managed": {"storage": {"size": "4Gi"}}}})).await, "rabbitmq size");
    refused(
        edit(json!({"rabbitmq": {"managed": {"storage": {"size": "2Gi", "storageClassName": "fast"}}}})).await,
        "rabbitmq class",
    );
    refused(edit(json!({"files": {"size": "5Gi"}})).await, "files shrink");
    refused(edit(json!({"files": {"accessMode": "ReadWriteMany"}})).await, "files access mode");
    refused(edit(json!({"files": {"storageClassName": "fast"}})).await, "files class");
    // Nothing of it was stored.
    let before = h.cs().await.spec;
    assert_eq!(before.rabbitmq.managed.as_ref().unwrap().storage.size.as_deref(), Some("2Gi"));

    // What is allowed: other edits, growing the files claim, switching a server to external,
    // another claim for the files.
    edit(json!({"services": {"user": {"replicas": 2}}})).await.expect("an unrelated edit");
    edit(json!({"files": {"size": "20Gi"}})).await.expect("growing the files claim");
    edit(json!({"rabbitmq": {"managed": null, "external": {"urlSecret": {"name": "amqp"}}}}))
        .await
        .expect("to external");
    edit(json!({"files": {"size": null, "existingClaim": "shared"}})).await.expect("an existing claim");
}

#[tokio::test]
async fn replicated_services_get_disruption_budgets() {
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    let Some(h) =
        Harness::new("drain", json!({"services": {"gateway": {"replicas": 3}, "user": {"replicas": 2}}})).await
    else {
        return;
    };
    h.ready().await;
    assert_eq!(h.names::<PodDisruptionBudget>().await, ["demo-gateway", "demo-user"]);
    let d = h.get::<Deployment>("demo-gateway").await.unwrap();
    let spread = d.spec.unwrap().template.spec.unwrap().topology_spread_constraints.unwrap();
    assert_eq!(spread.len(), 2);
    // Down to one replica: its budget goes (it would block every drain of the node).
    h.patch_spec(json!({"services": {"user": {"replicas": 1}}})).await;
    h.reconcile().await;
    assert_eq!(h.names::<PodDisruptionBudget>().await, ["demo-gateway"]);
}

#[tokio::test]
async fn a_failed_migration_is_retried_with_backoff_then_recovers() {
    let Some(h) = Harness::new("retry", json!({})).await else { return };
    h.ready().await;
    h.patch_spec(json!({"image": {"tag": "2.0.0"}})).await;
    let cs = h.reconcile().await;
    let job = cs.status.unwrap().migration.unwrap().job;

    // It fails now: the pass reports it with the log it could find and waits for the backoff.
    let fail = |at: String| {
        json!({"status": {"startTime": at, "failed": 11, "conditions": [
            {"type": "FailureTarget", "status": "True", "lastTransitionTime": at, "reason": "BackoffLimitExceeded"},
            {"type": "Failed", "status": "True", "lastTransitionTime": at, "reason": "BackoffLimitExceeded"}]}})
    };
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let now = format!("{}Z", &now[..19]);
    h.api::<Job>().patch_status(&job, &PatchParams::default(), &Patch::Merge(fail(now))).await.unwrap();
    let cs = h.reconcile().await;
    let m = cs.status.as_ref().unwrap().migration.clone().unwrap();
    assert_eq!((m.state, m.failures), (chatmesh_operator::crd::MigrationState::Failed, Some(1)));
    // No kubelet here: no pod, and the status says so rather than nothing.
    assert!(m.last_failure.as_deref().unwrap().contains("no log"), "{m:?}");
    assert!(m.next_retry.is_some());
    assert_eq!(condition(&cs, status::DEGRADED), ("True".into(), "MigrationFailed".into()));
    assert!(h.get::<Job>(&job).await.is_some(), "kept until the backoff has passed");
    assert_eq!(reconcile::migration_backoff(1), Duration::from_secs(30));
    assert_eq!(reconcile::migration_backoff(3), Duration::from_secs(120));
    assert_eq!(reconcile::migration_backoff(40), Duration::from_secs(1800));

    // The backoff has passed (the failure is older): the Job is deleted, then made anew.
    let mut older = fail("2026-01-01T00:00:00Z".into());
    older["status"].as_object_mut().unwrap().remove("startTime"); // set once, never changed
    h.api::<Job>().patch_status(&job, &PatchParams::default(), &Patch::Merge(older)).await.unwrap();
    h.reconcile().await;
    assert!(h.get::<Job>(&job).await.is_none(), "the failed Job is deleted");
    let cs = h.reconcile().await;
    let fresh = h.get::<Job>(&job).await.expect("the Job is run again");
    assert!(fresh.status.and_then(|s| s.conditions).unwrap_or_default().is_empty(), "a new Job");
    let m = cs.status.as_ref().unwrap().migration.clone().unwrap();
    assert_eq!((m.state, m.failures), (chatmesh_operator::crd::MigrationState::Running, Some(1)));
    assert_eq!(image(&h.get::<Deployment>("demo-gateway").await.unwrap()), "ghcr.io/chatmesh/chatmesh:0.9.0");

    // This time it succeeds: the services roll to 2.0.0.
    h.finish_job(&job, true).await;
    h.reconcile().await;
    assert_eq!(image(&h.get::<Deployment>("demo-gateway").await.unwrap()), "ghcr.io/chatmesh/chatmesh:2.0.0");
    let events = h.events().await;
    assert!(events.iter().any(|(reason, _)| reason == "MigrationRetried"), "{events:?}");
}

#[tokio::test]
async fn an_operator_upgrade_leaves_running_systems_on_their_version() {
    let Some(h) = Harness::new("version", json!({})).await else { return };
    h.ready().await;
    // A newer operator (another default tag): the system without a tag keeps running 0.9.0.
    let newer = Arc::new(Context {
        client: h.client.clone(),
        recorder: Recorder::new(h.client.clone(), Reporter { controller: "t".into(), instance: None }),
        defaults: Defaults { tag: "1.5.0".into() },
        requeue: Duration::from_secs(300),
    });
    let before = h.versions().await;
    reconcile::reconcile(Arc::new(h.cs().await), newer.clone()).await.unwrap();
    assert_eq!(h.versions().await, before, "nothing changed");
    assert_eq!(image(&h.get::<Deployment>("demo-gateway").await.unwrap()), "ghcr.io/chatmesh/chatmesh:0.9.0");
    // Until its tag is set.
    h.patch_spec(json!({"image": {"tag": "1.5.0"}})).await;
    reconcile::reconcile(Arc::new(h.cs().await), newer).await.unwrap();
    let cs = h.cs().await;
    assert_eq!(cs.status.unwrap().migration.unwrap().image, "ghcr.io/chatmesh/chatmesh:1.5.0");
}

/// Every request a client sends, as (method, path).
#[derive(Clone, Default)]
struct Requests(Arc<std::sync::Mutex<Vec<(String, String)>>>);

impl Requests {
    fn take(&self) -> Vec<(String, String)> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

impl<S> tower::Layer<S> for Requests {
    type Service = Counted<S>;
    fn layer(&self, inner: S) -> Counted<S> {
        Counted { inner, requests: self.clone() }
    }
}

#[derive(Clone)]
struct Counted<S> {
    inner: S,
    requests: Requests,
}

impl<S, B> tower::Service<http::Request<B>> for Counted<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;
    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }
    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        self.requests.0.lock().unwrap().push((req.method().to_string(), req.uri().path().to_string()));
        self.inner.call(req)
    }
}

#[tokio::test]
async fn a_pass_with_nothing_to_change_writes_nothing() {
    let Some(h) = Harness::new("steady", json!({"services": {"user": {"replicas": 2}}})).await else { return };
    h.ready().await;
    let requests = Requests::default();
    let path = std::env::var("CHATMESH_TEST_KUBECONFIG").unwrap();
    let config = Config::from_custom_kubeconfig(Kubeconfig::read_from(&path).unwrap(), &KubeConfigOptions::default())
        .await
        .unwrap();
    let client = kube::client::ClientBuilder::try_from(config).unwrap().with_layer(&requests).build();
    let ctx = Arc::new(Context {
        client: client.clone(),
        recorder: Recorder::new(client, Reporter { controller: "t".into(), instance: None }),
        defaults: Defaults { tag: "0.9.0".into() },
        requeue: Duration::from_secs(300),
    });
    let before = h.versions().await;
    for _ in 0..2 {
        reconcile::reconcile(Arc::new(h.cs().await), ctx.clone()).await.unwrap();
        let sent = requests.take();
        let writes: Vec<&(String, String)> = sent.iter().filter(|(m, _)| m != "GET").collect();
        assert!(writes.is_empty(), "a steady pass writes nothing: {writes:#?}");
        // The reads: 12 child lists, the credentials and the CA by name, the PodMonitor API
        // (discovery) and the PodMonitor by name.
        assert!(sent.len() <= 16, "{} requests: {sent:#?}", sent.len());
    }
    assert_eq!(h.versions().await, before);

    // Drift by hand (another field manager): the next pass puts it back, with writes.
    h.api::<Deployment>()
        .patch("demo-user", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 5}})))
        .await
        .unwrap();
    reconcile::reconcile(Arc::new(h.cs().await), ctx.clone()).await.unwrap();
    let writes = requests.take().into_iter().filter(|(m, _)| m == "PATCH").count();
    assert!(writes >= 1);
    assert_eq!(h.get::<Deployment>("demo-user").await.unwrap().spec.unwrap().replicas, Some(2));
}

#[tokio::test]
async fn two_operator_replicas_elect_one_leader() {
    use chatmesh_operator::leader::Elector;
    let Some(client) = client().await else { return };
    let ns = namespace(&client, "leader").await;
    let lease = Duration::from_secs(2);
    let a = Elector::new(client.clone(), &ns, "chatmesh-operator", "a", lease);
    let b = Elector::new(client.clone(), &ns, "chatmesh-operator", "b", lease);
    // Both try at the same moment: exactly one leads.
    let (ra, rb) = tokio::join!(a.try_lead(), b.try_lead());
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert!(ra != rb, "exactly one leader: a={ra} b={rb}");
    let (leader, standby) = if ra { (&a, &b) } else { (&b, &a) };
    // The leader renews; the standby keeps waiting.
    assert!(leader.try_lead().await.unwrap());
    assert!(!standby.try_lead().await.unwrap());
    // The leader goes (stops renewing): after the Lease's duration the standby takes over,
    // and the old leader, were it back, no longer leads.
    tokio::time::sleep(lease + Duration::from_millis(1200)).await;
    assert!(standby.try_lead().await.unwrap());
    assert!(!leader.try_lead().await.unwrap());
    let stored: k8s_openapi::api::coordination::v1::Lease =
        Api::namespaced(client.clone(), &ns).get("chatmesh-operator").await.unwrap();
    let spec = stored.spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some(standby.identity()));
    assert_eq!(spec.lease_transitions, Some(1));
}

#[tokio::test]
async fn an_autoscaled_service_keeps_the_replicas_its_autoscaler_sets() {
    use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    let spec = json!({"services": {"user": {"autoscaling": {"minReplicas": 2, "maxReplicas": 6}}}});
    let Some(h) = Harness::new("hpa", spec).await else { return };
    h.ready().await;
    let hpa = h.get::<HorizontalPodAutoscaler>("demo-user").await.expect("an HPA");
    let hpa = hpa.spec.unwrap();
    assert_eq!((hpa.scale_target_ref.name.as_str(), hpa.min_replicas, hpa.max_replicas), ("demo-user", Some(2), 6));
    assert!(h.get::<PodDisruptionBudget>("demo-user").await.is_some());

    // The autoscaler scales (through the scale subresource, as the HPA controller does).
    let scale = json!({"spec": {"replicas": 4}});
    h.api::<Deployment>()
        .patch_scale("demo-user", &PatchParams::apply("horizontal-pod-autoscaler"), &Patch::Merge(scale))
        .await
        .unwrap();
    h.reconcile().await;
    h.reconcile().await;
    assert_eq!(h.get::<Deployment>("demo-user").await.unwrap().spec.unwrap().replicas, Some(4));
    // Services without autoscaling keep the spec's count.
    assert_eq!(h.get::<Deployment>("demo-gateway").await.unwrap().spec.unwrap().replicas, Some(1));

    // Autoscaling off: the HPA goes and the spec's replicas count again.
    h.patch_spec(json!({"services": {"user": {"autoscaling": null, "replicas": 3}}})).await;
    h.reconcile().await;
    assert!(h.get::<HorizontalPodAutoscaler>("demo-user").await.is_none());
    assert_eq!(h.get::<Deployment>("demo-user").await.unwrap().spec.unwrap().replicas, Some(3));
}

#[tokio::test]
async fn the_backup_cron_job_is_accepted_and_refused_when_malformed() {
    use k8s_openapi::api::batch::v1::CronJob;
    let Some(h) = Harness::new("backup", json!({"backup": {"schedule": "30 2 * * *", "keep": 5}})).await else {
        return;
    };
    h.ready().await;
    let cron = h.get::<CronJob>("demo-backup").await.expect("the API server took the CronJob");
    assert_eq!(cron.spec.unwrap().schedule, "30 2 * * *");
    assert!(h.get::<PersistentVolumeClaim>("demo-backups").await.is_some());
    // The mysql NetworkPolicy admits the backup pods.
    let policy = h.get::<NetworkPolicy>("demo-mysql").await.unwrap();
    let text = serde_json::to_string(&policy.spec).unwrap();
    assert!(text.contains("\"backup\""), "{text}");
    // Backups off: the CronJob goes, the dumps stay.
    h.patch_spec(json!({"backup": null})).await;
    h.reconcile().await;
    assert!(h.get::<CronJob>("demo-backup").await.is_none());
    assert!(h.get::<PersistentVolumeClaim>("demo-backups").await.is_some());
}

#[tokio::test]
async fn a_changed_referenced_secret_rolls_the_pods_that_read_it() {
    use futures_util::StreamExt;
    let spec = json!({"sms": {"provider": "aliyun", "signName": "Chat", "templateCode": "SMS_1",
        "credentialsSecret": "aliyun"}});
    let Some(h) = Harness::new("secretwatch", spec).await else { return };
    let credentials = |key: &str| -> Secret {
        serde_json::from_value(json!({"metadata": {"name": "aliyun"},
            "stringData": {"accessKeyId": "id", "accessKeySecret": key}}))
        .unwrap()
    };
    h.api::<Secret>().create(&PostParams::default(), &credentials("first")).await.unwrap();
    h.ready().await;
    let before = config_hash(&h.get::<Deployment>("demo-user").await.unwrap());

    // The controller as the operator runs it, on this namespace; its periodic pass is 300 s
    // away, so only the watch on the referenced Secret can make it act within the test.
    let controller = chatmesh_operator::controller::controller(&h.client, Some(&h.ns))
        .run(reconcile::reconcile, reconcile::error_policy, h.ctx.clone())
        .for_each(|_| async {});
    let running = tokio::spawn(controller);
    tokio::time::sleep(Duration::from_secs(2)).await; // its first pass: nothing changes
    assert_eq!(config_hash(&h.get::<Deployment>("demo-user").await.unwrap()), before);

    // A Secret the spec does not name changes nothing; the named one rolls the pods.
    let mut unrelated = credentials("other");
    unrelated.metadata.name = Some("unrelated".into());
    h.api::<Secret>().create(&PostParams::default(), &unrelated).await.unwrap();
    let rotated = json!({"stringData": {"accessKeySecret": "rotated"}});
    h.api::<Secret>().patch("aliyun", &PatchParams::default(), &Patch::Merge(rotated)).await.unwrap();
    let mut after = before.clone();
    for _ in 0..100 {
        after = config_hash(&h.get::<Deployment>("demo-user").await.unwrap());
        if after != before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    running.abort();
    assert_ne!(after, before, "the rotated credential did not reach the pod template within 10 s");
}

#[tokio::test]
async fn a_pod_monitor_scrapes_the_services_where_the_kind_is_served() {
    let spec = json!({"observability": {"podMonitor": {"labels": {"release": "prom"}, "interval": "15s"}}});
    let Some(h) = Harness::new("podmonitor", spec).await else { return };
    assert!(!reconcile::serves(&h.client, "nothing.chatmesh.io/v1", "things").await.unwrap(), "an absent group");
    h.ready().await;
    let api: Api<DynamicObject> =
        Api::namespaced_with(h.client.clone(), &h.ns, &chatmesh_operator::build::monitoring::api_resource());
    let monitor = api.get("demo-services").await.unwrap();
    assert_eq!(monitor.labels()["release"], "prom");
    assert_eq!(monitor.owner_references()[0].name, "demo", "collected with the ChatSystem");
    let spec = &monitor.data["spec"];
    assert_eq!(spec["selector"]["matchLabels"][LABEL_INSTANCE], "demo");
    let services = spec["selector"]["matchExpressions"][0]["values"].as_array().unwrap();
    assert_eq!(services.len(), 7, "every service, no server: {services:?}");
    assert_eq!(spec["podMetricsEndpoints"], json!([{"port": "admin", "path": "/metrics", "interval": "15s"}]));
    // The port it names is the services' admin port.
    let user = h.get::<Deployment>("demo-user").await.unwrap();
    let ports = user.spec.unwrap().template.spec.unwrap().containers[0].ports.clone().unwrap();
    assert!(ports.iter().any(|p| p.name.as_deref() == Some("admin")), "{ports:?}");

    // Unchanged: not written again; disabled: deleted.
    let version = monitor.resource_version();
    h.reconcile().await;
    assert_eq!(api.get("demo-services").await.unwrap().resource_version(), version);
    h.patch_spec(json!({"observability": {"podMonitor": {"enabled": false}}})).await;
    h.reconcile().await;
    assert!(api.get_opt("demo-services").await.unwrap().is_none());
}
