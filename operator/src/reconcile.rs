//! The impure edges of a pass: read the cluster, apply what `build` produced, delete orphans,
//! write the status, and tell about it (Events, logs, metrics).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, PersistentVolumeClaim, Secret, Service};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Client, Resource, ResourceExt};
use rand::Rng;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Error;
use crate::build::{
    self, Component, Defaults, Desired, JobState, LABEL_INSTANCE, LABEL_MANAGED_BY, MANAGER, Observed, kind_of,
};
use crate::crd::{ChatSystem, ChatSystemStatus, InternalTlsMode};
use crate::status::{self, Applied, DEGRADED, READY};
use crate::validate::{self, SecretLookup};

/// What every pass shares.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub defaults: Defaults,
    /// How often a ChatSystem is looked at again without any change (catches drift that no
    /// watch reports, e.g. a hand edit of a child that kept its labels).
    pub requeue: Duration,
}

/// One pass for one ChatSystem: the controller's reconcile function.
pub async fn reconcile(cs: Arc<ChatSystem>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = run(&cs, &ctx).await;
    if result.is_ok() {
        FAILURES.lock().unwrap_or_else(|e| e.into_inner()).remove(&failures_key(&cs));
    }
    crate::metrics::reconciled(started.elapsed(), result.as_ref().map(|_| ()));
    if let Err(err) = &result {
        tracing::warn!(chatsystem = %cs.name_any(), namespace = ?cs.namespace(), error = %err, "reconcile failed");
        report_failure(&cs, &ctx, err).await;
    }
    result
}

/// Consecutive failed passes per ChatSystem (namespace, name), for the retry backoff.
static FAILURES: std::sync::LazyLock<std::sync::Mutex<BTreeMap<(String, String), u32>>> =
    std::sync::LazyLock::new(Default::default);

fn failures_key(cs: &ChatSystem) -> (String, String) {
    (cs.namespace().unwrap_or_default(), cs.name_any())
}

/// The delay before retrying after `failures` consecutive failed passes: 5 s doubling up to
/// 5 min, +-20 % so that many failing ChatSystems do not retry in step.
pub fn retry_after(failures: u32) -> Duration {
    let base =
        Duration::from_secs(5).saturating_mul(1 << failures.saturating_sub(1).min(10)).min(Duration::from_secs(300));
    base.mul_f64(rand::rng().random_range(0.8..1.2))
}

/// The controller's error policy: try again after a growing delay (the failure is already
/// reported); a successful pass resets it.
pub fn error_policy(cs: Arc<ChatSystem>, _err: &Error, _ctx: Arc<Context>) -> Action {
    let mut failures = FAILURES.lock().unwrap_or_else(|e| e.into_inner());
    let n = failures.entry(failures_key(&cs)).or_insert(0);
    *n = n.saturating_add(1);
    Action::requeue(retry_after(*n))
}

async fn run(cs: &ChatSystem, ctx: &Context) -> Result<Action, Error> {
    let name = cs.name_any();
    let ns = cs.namespace().ok_or_else(|| Error::NoNamespace(name.clone()))?;
    if cs.metadata.deletion_timestamp.is_some() {
        // Being deleted: the garbage collector removes the children; applying them again
        // would only race it.
        return Ok(Action::await_change());
    }
    if cs.spec.paused {
        write_status(cs, ctx, status::paused(cs, Timestamp::now())).await?;
        return Ok(Action::await_change());
    }

    // Read.
    let existing = Existing::read(&ctx.client, &ns, &name).await?;
    let lookups = read_external(&ctx.client, &ns, &cs.spec).await?;

    let provided = read_provided_tls(&ctx.client, &ns, &cs.spec).await?;

    // Validate.
    let valid = validate::validate(&cs.spec, &lookups).and_then(|digests| {
        let problems = validate::validate_provided(&cs.spec, &name, &provided, time::OffsetDateTime::now_utc());
        if problems.is_empty() { Ok(digests) } else { Err(problems) }
    });
    let external_digests = match valid {
        Ok(digests) => digests,
        Err(problems) => {
            tracing::info!(chatsystem = %name, namespace = %ns, ?problems, "spec cannot be acted on");
            let new = status::invalid(cs, &problems, Timestamp::now());
            if transitioned(cs.status.as_ref(), &new, DEGRADED) {
                publish(ctx, cs, EventType::Warning, "InvalidSpec", "Validate", problems.join("; ")).await;
            }
            write_status(cs, ctx, new).await?;
            // A named Secret appearing starts a pass (the controller watches them); anything
            // else the spec needs is looked at again soon.
            return Ok(Action::requeue(ctx.requeue.min(Duration::from_secs(30))));
        }
    };

    // Build. A password is made only for a server without data: one with data (a claim of its
    // StatefulSet exists) accepts only the password it was made with.
    let current = read_credentials(&ctx.client, &ns, &name).await?;
    let needed = build::credential_keys(&cs.spec);
    let mut lost = vec![];
    let mut claims = BTreeSet::new();
    for key in needed.iter().filter(|k| !current.contains_key(**k)) {
        let Some(server) = build::credential_server(key) else { continue };
        let prefix = format!("data-{name}-{}-", server.name());
        let with_data: Vec<String> =
            existing.pvcs.iter().map(|p| p.name_any()).filter(|n| n.starts_with(&prefix)).collect();
        if !with_data.is_empty() {
            lost.push(key.to_string());
            claims.extend(with_data);
        }
    }
    if !lost.is_empty() {
        return Err(Error::CredentialsLost {
            secret: format!("{name}-credentials"),
            keys: lost,
            claims: claims.into_iter().collect(),
        });
    }
    let (credentials, generated) = complete_credentials(current, &needed);
    if !generated.is_empty() {
        tracing::info!(chatsystem = %name, keys = ?generated, "generated credentials");
    }
    let (internal_tls, next_renewal, new_ca) = match cs.spec.internal_tls.mode {
        InternalTlsMode::Operator => {
            let (material, due, created) = ensure_tls(&ctx.client, &ns, cs, &existing).await?;
            (Some(material), Some(due), created)
        }
        InternalTlsMode::Secret | InternalTlsMode::Disabled => (None, None, false),
    };
    let observed = Observed {
        credentials,
        external_digests,
        deployed_images: existing.deployed_images(&name),
        jobs: existing.job_states(),
        internal_tls,
    };
    let mut desired = build::build(cs, &observed, &ctx.defaults);
    let retry = migration_retry(ctx, cs, &ns, &existing, &mut desired).await?;
    if new_ca {
        create_ca(ctx, &ns, build::ca_secret_name(&name), &desired).await?;
    }

    // Apply, in order: configuration, volumes, Services, servers, the migration, services.
    let mut changes = vec![];
    let mut apply = Applier { ctx, ns: &ns, before: &existing.versions, seen: &existing.seen, changes: &mut changes };
    for o in &desired.secrets {
        apply.apply(o).await?;
    }
    for o in &desired.config_maps {
        apply.apply(o).await?;
    }
    for o in &desired.pvcs {
        apply.apply(o).await?;
    }
    let mut public_service = None;
    for o in &desired.services {
        let svc = apply.apply(o).await?;
        if svc.name_any() == format!("{name}-public") {
            public_service = Some(svc);
        }
    }
    // Before any pod starts: a new pod is never reachable beyond what the policies allow.
    for o in &desired.network_policies {
        apply.apply(o).await?;
    }
    let mut stateful_sets = vec![];
    for o in &desired.stateful_sets {
        stateful_sets.push(apply.apply(o).await?);
    }
    for o in &desired.jobs {
        apply.apply(o).await?;
    }
    let mut deployments = vec![];
    for o in &desired.deployments {
        deployments.push(apply.apply(o).await?);
    }
    for o in &desired.ingresses {
        apply.apply(o).await?;
    }
    for o in &desired.pdbs {
        apply.apply(o).await?;
    }
    for o in &desired.hpas {
        apply.apply(o).await?;
    }
    for o in &desired.cron_jobs {
        apply.apply(o).await?;
    }
    changes.extend(pod_monitor(ctx, &ns, &name, desired.pod_monitor.as_ref()).await?);
    let deleted = delete_orphans(ctx, &ns, cs, &desired, &existing).await?;

    for (verb, kind, child) in changes.iter().chain(&deleted) {
        tracing::info!(chatsystem = %name, namespace = %ns, kind, name = %child, "{verb}");
        // Reason per kind and the child as the related object: the recorder groups events
        // with equal reason, action and related object into one series ("Created ... (x28)").
        let related = ObjectReference {
            kind: Some(kind.to_string()),
            name: Some(child.clone()),
            namespace: Some(ns.clone()),
            ..ObjectReference::default()
        };
        let reason = format!("{verb}{kind}");
        publish_about(ctx, cs, EventType::Normal, &reason, verb, format!("{verb} {kind} {child}"), Some(related)).await;
    }

    // Status.
    let applied = Applied {
        desired: &desired,
        deployments: &deployments,
        stateful_sets: &stateful_sets,
        public_service: public_service.as_ref(),
    };
    let mut new = status::compute(cs, &applied, Timestamp::now());
    if let Some(m) = new.migration.as_mut() {
        m.failures = retry.failures;
        m.last_failure = retry.last_failure.clone();
        m.next_retry = retry.next_retry.map(|t| t.to_string());
    }
    for type_ in [READY, DEGRADED] {
        if transitioned(cs.status.as_ref(), &new, type_)
            && let Some(c) = status::condition(Some(&new), type_)
        {
            let warn = (type_ == DEGRADED) == (c.status == "True");
            let kind = if warn { EventType::Warning } else { EventType::Normal };
            publish(ctx, cs, kind, &c.reason, "Reconcile", c.message.clone()).await;
        }
    }
    write_status(cs, ctx, new).await?;
    let after = requeue_after(ctx.requeue, next_renewal, time::OffsetDateTime::now_utc());
    Ok(Action::requeue(retry.wait.map_or(after, |wait| wait.min(after))))
}

/// First retry of a failed migration after this long, doubling per failure up to
/// `MIGRATION_RETRY_MAX`: a database that is still starting, or briefly away, gets time.
const MIGRATION_RETRY_BASE: Duration = Duration::from_secs(30);
const MIGRATION_RETRY_MAX: Duration = Duration::from_secs(30 * 60);

/// The delay before the run after `failures` failed ones.
pub fn migration_backoff(failures: u32) -> Duration {
    MIGRATION_RETRY_BASE.saturating_mul(1 << failures.saturating_sub(1).min(16)).min(MIGRATION_RETRY_MAX)
}

/// What a pass knows of the target migration's failures.
#[derive(Default)]
struct Retry {
    failures: Option<u32>,
    last_failure: Option<String>,
    next_retry: Option<Timestamp>,
    /// Look again this soon.
    wait: Option<Duration>,
}

/// A failed migration Job is deleted once its backoff has passed, so that the next pass
/// makes it anew (same name: same pod template); until then the pass waits for it. The count
/// and the last failure's log tail are carried in the status from pass to pass.
async fn migration_retry(
    ctx: &Context,
    cs: &ChatSystem,
    ns: &str,
    existing: &Existing,
    desired: &mut Desired,
) -> Result<Retry, Error> {
    let previous =
        cs.status.as_ref().and_then(|s| s.migration.as_ref()).filter(|m| m.job == desired.migration_job).cloned();
    let mut retry = Retry {
        failures: previous.as_ref().and_then(|m| m.failures),
        last_failure: previous.as_ref().and_then(|m| m.last_failure.clone()),
        ..Retry::default()
    };
    if desired.migration_state != Some(JobState::Failed) {
        return Ok(retry);
    }
    let job_name = desired.migration_job.clone();
    let Some(job) = existing.jobs.iter().find(|j| j.name_any() == job_name) else { return Ok(retry) };
    let failed_at = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Failed" && c.status == "True"))
        .and_then(|c| c.last_transition_time.as_ref())
        .map_or_else(Timestamp::now, |t| t.0);
    // A failure is counted (and its log read) once: when the status first says Failed.
    let newly_failed = previous.as_ref().is_none_or(|m| m.state != crate::crd::MigrationState::Failed);
    if newly_failed {
        retry.failures = Some(retry.failures.unwrap_or(0) + 1);
        retry.last_failure = Some(log_tail(ctx, ns, &job_name).await);
    }
    let delay = migration_backoff(retry.failures.unwrap_or(1));
    let due = failed_at + jiff_span(delay);
    let now = Timestamp::now();
    if now < due {
        retry.next_retry = Some(due);
        retry.wait = Some(Duration::try_from(due.duration_since(now)).unwrap_or(Duration::ZERO));
        return Ok(retry);
    }
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), ns);
    match api.delete(&job_name, &DeleteParams::background()).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(source) => return Err(Error::Delete { kind: "Job", name: job_name, source }),
    }
    tracing::info!(chatsystem = %cs.name_any(), namespace = %ns, job = %job_name, failures = retry.failures, "retrying the failed migration");
    publish(
        ctx,
        cs,
        EventType::Normal,
        "MigrationRetried",
        "Migrate",
        format!("Job {job_name} failed; running it again"),
    )
    .await;
    // Made anew by the next pass, once this one is gone.
    desired.jobs.retain(|j| j.name_any() != job_name);
    retry.wait = Some(Duration::from_secs(1));
    Ok(retry)
}

fn jiff_span(d: Duration) -> k8s_openapi::jiff::SignedDuration {
    k8s_openapi::jiff::SignedDuration::try_from(d).unwrap_or(k8s_openapi::jiff::SignedDuration::MAX)
}

/// The last lines of the failed Job's newest pod, bounded; or why there are none.
async fn log_tail(ctx: &Context, ns: &str, job: &str) -> String {
    use k8s_openapi::api::core::v1::Pod;
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let list = match pods.list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}"))).await {
        Ok(list) => list.items,
        Err(err) => return format!("(no log: listing the Job's pods failed: {err})"),
    };
    let Some(pod) = list.iter().max_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0)) else {
        return "(no log: the Job's pods are gone)".into();
    };
    let params = kube::api::LogParams { tail_lines: Some(20), limit_bytes: Some(2048), ..Default::default() };
    match pods.logs(&pod.name_any(), &params).await {
        Ok(log) => log.chars().rev().take(2048).collect::<Vec<_>>().into_iter().rev().collect(),
        Err(err) => format!("(no log of pod {}: {err})", pod.name_any()),
    }
}

/// The regular resync, or sooner when a certificate is due for renewal before it.
pub fn requeue_after(resync: Duration, renewal: Option<time::OffsetDateTime>, now: time::OffsetDateTime) -> Duration {
    let Some(renewal) = renewal else { return resync };
    let until: Duration = (renewal - now).try_into().unwrap_or(Duration::ZERO);
    // At least a second: a renewal that is due now happens in this pass already.
    until.clamp(Duration::from_secs(1), resync.max(Duration::from_secs(1)))
}

/// Stores a CA made in this pass with a create, which fails if one appeared since this pass
/// looked (e.g. made by a second operator replica): an apply would overwrite that CA, and every
/// certificate signed by it. The next pass then adopts the one that is there.
async fn create_ca(ctx: &Context, ns: &str, name: String, desired: &Desired) -> Result<(), Error> {
    let secret = desired.secrets.iter().find(|s| s.name_any() == name).expect("mode operator builds the CA Secret");
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let params = PostParams { field_manager: Some(MANAGER.into()), ..PostParams::default() };
    api.create(&params, secret).await.map_err(|source| Error::Apply { kind: "Secret", name, source })?;
    Ok(())
}

/// Mode operator: the CA (read by name, so an existing one is adopted and never replaced)
/// and each service's certificate, renewed where due. Returns them, the next renewal, and
/// whether the CA is new.
async fn ensure_tls(
    client: &Client,
    ns: &str,
    cs: &ChatSystem,
    existing: &Existing,
) -> Result<(crate::tls::TlsMaterial, time::OffsetDateTime, bool), Error> {
    let name = cs.name_any();
    let ca_name = build::ca_secret_name(&name);
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let ca_secret =
        api.get_opt(&ca_name).await.map_err(|source| Error::Read { what: format!("Secret {ca_name}"), source })?;
    let ca_data: Option<BTreeMap<String, Vec<u8>>> =
        ca_secret.as_ref().map(|s| s.data.clone().unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect());
    let mut current = BTreeMap::new();
    for component in Component::ALL {
        let secret_name = build::service_tls_secret_name(&name, component);
        let Some(secret) = existing.secrets.iter().find(|s| s.name_any() == secret_name) else { continue };
        let text = |key: &str| {
            secret.data.as_ref().and_then(|d| d.get(key)).map(|v| String::from_utf8_lossy(&v.0).into_owned())
        };
        if let (Some(cert_pem), Some(key_pem)) = (text(crate::tls::CERT_KEY), text(crate::tls::KEY_KEY)) {
            current.insert(component, crate::tls::KeyedCert { cert_pem, key_pem });
        }
    }
    // The schema and the validate step have checked the lifetime already.
    let lifetime = crate::tls::parse_lifetime(cs.spec.internal_tls.certificate_lifetime.as_deref())
        .unwrap_or(crate::tls::DEFAULT_LIFETIME);
    let now = time::OffsetDateTime::now_utc();
    let ensured =
        crate::tls::ensure(&name, ns, ca_data.as_ref().map(|d| (ca_name.as_str(), d)), &current, lifetime, now)?;
    if ensured.created_ca {
        tracing::info!(chatsystem = %name, namespace = %ns, secret = %ca_name, "made the internal CA");
    }
    for (component, reason) in &ensured.issued {
        crate::metrics::certificate_issued(reason);
        tracing::info!(chatsystem = %name, namespace = %ns, service = component.name(), reason, "issued a service certificate");
    }
    let mut material = ensured.material;
    material.ca_secret_type = ca_secret.and_then(|s| s.type_);
    Ok((material, ensured.next_renewal, ensured.created_ca))
}

/// The generated passwords so far, read by name: a Secret restored by hand (without our
/// labels) is adopted too. Kept forever: the servers' data was made with them.
async fn read_credentials(client: &Client, ns: &str, name: &str) -> Result<BTreeMap<String, String>, Error> {
    let secret_name = format!("{name}-credentials");
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret = api
        .get_opt(&secret_name)
        .await
        .map_err(|source| Error::Read { what: format!("Secret {secret_name}"), source })?;
    Ok(secret
        .and_then(|s| s.data)
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
        .collect())
}

/// Whether condition `type_` has a different status in `new` than in `old`.
fn transitioned(old: Option<&ChatSystemStatus>, new: &ChatSystemStatus, type_: &str) -> bool {
    let before = status::condition(old, type_).map(|c| c.status.as_str());
    let after = status::condition(Some(new), type_).map(|c| c.status.as_str());
    before != after
}

/// Every child this ChatSystem has now, found by its labels.
struct Existing {
    secrets: Vec<Secret>,
    config_maps: Vec<ConfigMap>,
    services: Vec<Service>,
    stateful_sets: Vec<StatefulSet>,
    jobs: Vec<Job>,
    deployments: Vec<Deployment>,
    ingresses: Vec<Ingress>,
    network_policies: Vec<NetworkPolicy>,
    pdbs: Vec<PodDisruptionBudget>,
    hpas: Vec<HorizontalPodAutoscaler>,
    cron_jobs: Vec<CronJob>,
    /// Claims with our labels: the files claim and the servers' data claims (labelled by their
    /// StatefulSet's claim template).
    pvcs: Vec<PersistentVolumeClaim>,
    /// resourceVersion of every child by (kind, name), to tell created and updated apart.
    versions: BTreeMap<(&'static str, String), String>,
    /// Children whose applied hash is known and that nobody else wrote since: (hash, object).
    seen: BTreeMap<(&'static str, String), (String, serde_json::Value)>,
}

async fn list<K>(client: &Client, ns: &str, selector: &str) -> Result<Vec<K>, Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + k8s_openapi::Resource
        + Clone
        + DeserializeOwned
        + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let list = api
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(|source| Error::Read { what: format!("{} list", kind_of::<K>()), source })?;
    Ok(list.items)
}

/// Whether `current` still has the replica count that `desired` sets (if it sets one). A scale
/// write is not counted as drift in `versions` (an autoscaler's), but when the desired object
/// carries `replicas` (no autoscaler), `kubectl scale` (the restore path of the README scales the
/// services to 0) is drift like any edit, undone once the system is resumed.
fn replicas_kept<K: Serialize>(desired: &K, current: &serde_json::Value) -> bool {
    let desired = serde_json::to_value(desired).ok();
    match desired.as_ref().and_then(|d| d.pointer("/spec/replicas")) {
        Some(replicas) => current.pointer("/spec/replicas") == Some(replicas),
        None => true,
    }
}

/// Annotation holding the hash of the object as last applied: an unchanged desired object is
/// not applied again.
pub const APPLIED_HASH_ANNOTATION: &str = "chatmesh.io/applied-hash";

fn versions<K: Resource<DynamicType = ()> + k8s_openapi::Resource + Serialize>(
    out: &mut BTreeMap<(&'static str, String), String>,
    seen: &mut BTreeMap<(&'static str, String), (String, serde_json::Value)>,
    items: &[K],
) {
    for item in items {
        let key = (kind_of::<K>(), item.name_any());
        out.insert(key.clone(), item.resource_version().unwrap_or_default());
        // An object someone else wrote (kubectl edit, another tool; status writes aside) is
        // drift to undo: it is applied again whatever its hash says.
        let only_ours = item.meta().managed_fields.iter().flatten().all(|f| {
            // Status and scale (an HPA) writes are not ours to undo.
            f.manager.as_deref() == Some(MANAGER)
                || f.subresource.as_deref().is_some_and(|s| s == "status" || s == "scale")
        });
        if let Some(hash) = item.annotations().get(APPLIED_HASH_ANNOTATION)
            && only_ours
            && let Ok(value) = serde_json::to_value(item)
        {
            seen.insert(key, (hash.clone(), value));
        }
    }
}

impl Existing {
    async fn read(client: &Client, ns: &str, name: &str) -> Result<Self, Error> {
        let selector = format!("{LABEL_INSTANCE}={name},{LABEL_MANAGED_BY}={MANAGER}");
        let existing = Existing {
            secrets: list(client, ns, &selector).await?,
            config_maps: list(client, ns, &selector).await?,
            services: list(client, ns, &selector).await?,
            stateful_sets: list(client, ns, &selector).await?,
            jobs: list(client, ns, &selector).await?,
            deployments: list(client, ns, &selector).await?,
            ingresses: list(client, ns, &selector).await?,
            network_policies: list(client, ns, &selector).await?,
            pdbs: list(client, ns, &selector).await?,
            hpas: list(client, ns, &selector).await?,
            cron_jobs: list(client, ns, &selector).await?,
            // Claims are never deleted here.
            pvcs: list(client, ns, &selector).await?,
            versions: BTreeMap::new(),
            seen: BTreeMap::new(),
        };
        let mut v = BTreeMap::new();
        let mut seen = BTreeMap::new();
        versions(&mut v, &mut seen, &existing.secrets);
        versions(&mut v, &mut seen, &existing.config_maps);
        versions(&mut v, &mut seen, &existing.pvcs);
        versions(&mut v, &mut seen, &existing.services);
        versions(&mut v, &mut seen, &existing.stateful_sets);
        versions(&mut v, &mut seen, &existing.jobs);
        versions(&mut v, &mut seen, &existing.deployments);
        versions(&mut v, &mut seen, &existing.ingresses);
        versions(&mut v, &mut seen, &existing.network_policies);
        versions(&mut v, &mut seen, &existing.pdbs);
        versions(&mut v, &mut seen, &existing.hpas);
        versions(&mut v, &mut seen, &existing.cron_jobs);
        Ok(Existing { versions: v, seen, ..existing })
    }

    fn deployed_images(&self, name: &str) -> BTreeMap<Component, String> {
        let mut images = BTreeMap::new();
        for component in Component::ALL {
            let dep_name = format!("{name}-{}", component.name());
            let image = self
                .deployments
                .iter()
                .find(|d| d.name_any() == dep_name)
                .and_then(|d| d.spec.as_ref()?.template.spec.as_ref()?.containers.first()?.image.clone());
            if let Some(image) = image {
                images.insert(component, image);
            }
        }
        images
    }

    fn job_states(&self) -> BTreeMap<String, JobState> {
        self.jobs.iter().map(|job| (job.name_any(), job_state(job))).collect()
    }
}

fn job_state(job: &Job) -> JobState {
    let Some(status) = &job.status else { return JobState::Running };
    let condition = |type_: &str| status.conditions.iter().flatten().any(|c| c.type_ == type_ && c.status == "True");
    if condition("Complete") || status.succeeded.unwrap_or(0) > 0 {
        JobState::Succeeded
    } else if condition("Failed") {
        JobState::Failed
    } else {
        JobState::Running
    }
}

/// Looks up every Secret key the spec references (values are reduced to digests at once).
async fn read_external(
    client: &Client,
    ns: &str,
    spec: &crate::crd::ChatSystemSpec,
) -> Result<BTreeMap<(String, String), SecretLookup>, Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let mut secrets: BTreeMap<String, Option<Secret>> = BTreeMap::new();
    let mut lookups = BTreeMap::new();
    for r in build::external_refs(spec).into_iter().chain(build::tls_refs(spec)) {
        if !secrets.contains_key(&r.secret) {
            let secret = api
                .get_opt(&r.secret)
                .await
                .map_err(|source| Error::Read { what: format!("Secret {}", r.secret), source })?;
            secrets.insert(r.secret.clone(), secret);
        }
        let found = validate::lookup(secrets[&r.secret].as_ref(), &r.key);
        lookups.insert((r.secret, r.key), found);
    }
    Ok(lookups)
}

/// Mode secret: each service's certificate, key and CA bundle from the user's Secrets (where
/// all three keys exist; missing ones are reported by validation).
async fn read_provided_tls(
    client: &Client,
    ns: &str,
    spec: &crate::crd::ChatSystemSpec,
) -> Result<validate::ProvidedFiles, Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let mut secrets: BTreeMap<String, Option<Secret>> = BTreeMap::new();
    let mut files = BTreeMap::new();
    for component in Component::ALL {
        let Some(source) = build::provided(spec, component) else { continue };
        if !secrets.contains_key(&source.secret) {
            let secret = api
                .get_opt(&source.secret)
                .await
                .map_err(|source_err| Error::Read { what: format!("Secret {}", source.secret), source: source_err })?;
            secrets.insert(source.secret.clone(), secret);
        }
        let data = secrets[&source.secret].as_ref().and_then(|s| s.data.as_ref());
        let text = |key: &str| data.and_then(|d| d.get(key)).map(|v| String::from_utf8_lossy(&v.0).into_owned());
        if let (Some(cert), Some(key), Some(ca)) = (text(&source.cert), text(&source.key), text(&source.ca)) {
            files.insert(component, (cert, key, ca));
        }
    }
    Ok(files)
}

/// `existing` plus a fresh random password for every needed key it lacks; also returns the
/// keys generated.
fn complete_credentials(
    mut existing: BTreeMap<String, String>,
    needed: &[&'static str],
) -> (BTreeMap<String, String>, Vec<&'static str>) {
    let mut generated = vec![];
    for key in needed {
        if !existing.contains_key(*key) {
            // Alphanumeric only: the passwords go into URLs unescaped.
            let password: String =
                rand::rng().sample_iter(&rand::distr::Alphanumeric).take(32).map(char::from).collect();
            existing.insert(key.to_string(), password);
            generated.push(*key);
        }
    }
    (existing, generated)
}

/// Server-side applies children and notes which were created or changed.
struct Applier<'a> {
    ctx: &'a Context,
    ns: &'a str,
    before: &'a BTreeMap<(&'static str, String), String>,
    seen: &'a BTreeMap<(&'static str, String), (String, serde_json::Value)>,
    changes: &'a mut Vec<(&'static str, &'static str, String)>,
}

impl Applier<'_> {
    async fn apply<K>(&mut self, obj: &K) -> Result<K, Error>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + k8s_openapi::Resource
            + Clone
            + Serialize
            + DeserializeOwned
            + Debug,
    {
        let api: Api<K> = Api::namespaced(self.ctx.client.clone(), self.ns);
        let name = obj.name_any();
        let kind = kind_of::<K>();
        // Unchanged since it was applied, and written by nobody else since: no request.
        let hash = build::hash_of(obj);
        if let Some((applied_hash, current)) = self.seen.get(&(kind, name.clone()))
            && *applied_hash == hash
            && replicas_kept(obj, current)
            && let Ok(current) = serde_json::from_value::<K>(current.clone())
        {
            return Ok(current);
        }
        let mut obj = obj.clone();
        obj.meta_mut().annotations.get_or_insert_default().insert(APPLIED_HASH_ANNOTATION.into(), hash);
        // One field manager, forced: this operator owns these fields, and an edit by hand is
        // drift to undo. Applying an unchanged object is a no-op (no new resourceVersion).
        let params = PatchParams::apply(MANAGER).force();
        let applied = api.patch(&name, &params, &Patch::Apply(&obj)).await.map_err(|source| Error::Apply {
            kind,
            name: name.clone(),
            source,
        })?;
        match self.before.get(&(kind, name.clone())) {
            None => self.changes.push(("Created", kind, name)),
            Some(rv) if Some(rv) != applied.meta().resource_version.as_ref() => {
                self.changes.push(("Updated", kind, name))
            }
            Some(_) => {}
        }
        Ok(applied)
    }
}

/// Whether the cluster serves `plural` in `api_version` (e.g. a CRD that may not be installed).
pub async fn serves(client: &Client, api_version: &str, plural: &str) -> Result<bool, kube::Error> {
    match client.list_api_group_resources(api_version).await {
        Ok(list) => Ok(list.resources.iter().any(|r| r.name == plural)),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(false),
        Err(e) => Err(e),
    }
}

/// The PodMonitor, where the cluster serves that kind (one discovery request per pass, and a
/// get where served): applied when its desired form changed, deleted when no longer wanted.
async fn pod_monitor(
    ctx: &Context,
    ns: &str,
    name: &str,
    desired: Option<&DynamicObject>,
) -> Result<Vec<(&'static str, &'static str, String)>, Error> {
    use build::monitoring::{GROUP, KIND, PLURAL, VERSION};
    let served = serves(&ctx.client, &format!("{GROUP}/{VERSION}"), PLURAL)
        .await
        .map_err(|source| Error::Read { what: format!("the API group {GROUP}/{VERSION}"), source })?;
    if !served {
        return Ok(vec![]);
    }
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, &build::monitoring::api_resource());
    let child = format!("{name}-services");
    let current =
        api.get_opt(&child).await.map_err(|source| Error::Read { what: format!("{KIND} {child}"), source })?;
    let Some(desired) = desired else {
        let ours =
            current.as_ref().is_some_and(|c| c.labels().get(LABEL_MANAGED_BY).map(String::as_str) == Some(MANAGER));
        if !ours {
            return Ok(vec![]);
        }
        api.delete(&child, &DeleteParams::default()).await.map_err(|source| Error::Delete {
            kind: KIND,
            name: child.clone(),
            source,
        })?;
        return Ok(vec![("Deleted", KIND, child)]);
    };
    let hash = build::hash_of(desired);
    if current.as_ref().and_then(|c| c.annotations().get(APPLIED_HASH_ANNOTATION)) == Some(&hash) {
        return Ok(vec![]);
    }
    let mut obj = desired.clone();
    obj.metadata.annotations.get_or_insert_default().insert(APPLIED_HASH_ANNOTATION.into(), hash);
    api.patch(&child, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&obj))
        .await
        .map_err(|source| Error::Apply { kind: KIND, name: child.clone(), source })?;
    Ok(vec![(if current.is_some() { "Updated" } else { "Created" }, KIND, child)])
}

/// Deletes every labelled child of this ChatSystem that this pass did not produce (e.g. the
/// StatefulSet of a server switched to external, an old migration Job). Volume claims are never
/// deleted here: data goes only with the ChatSystem itself.
async fn delete_orphans(
    ctx: &Context,
    ns: &str,
    cs: &ChatSystem,
    desired: &Desired,
    existing: &Existing,
) -> Result<Vec<(&'static str, &'static str, String)>, Error> {
    let wanted: BTreeSet<(&'static str, String)> = desired.names().into_iter().collect();
    let uid = cs.uid();
    let mut deleted = vec![];
    async fn sweep<K>(
        ctx: &Context,
        ns: &str,
        items: &[K],
        wanted: &BTreeSet<(&'static str, String)>,
        uid: &Option<String>,
        deleted: &mut Vec<(&'static str, &'static str, String)>,
    ) -> Result<(), Error>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + k8s_openapi::Resource
            + Clone
            + DeserializeOwned
            + Debug,
    {
        let kind = kind_of::<K>();
        let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
        for item in items {
            let name = item.name_any();
            // Only objects this ChatSystem controls: labels alone could be copied by anyone.
            let ours =
                item.owner_references().iter().any(|o| o.controller == Some(true) && Some(&o.uid) == uid.as_ref());
            if !ours || wanted.contains(&(kind, name.clone())) || item.meta().deletion_timestamp.is_some() {
                continue;
            }
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => deleted.push(("Deleted", kind, name)),
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(source) => return Err(Error::Delete { kind, name, source }),
            }
        }
        Ok(())
    }
    // Workloads before the configuration they read.
    sweep(ctx, ns, &existing.ingresses, &wanted, &uid, &mut deleted).await?;
    sweep(ctx, ns, &existing.pdbs, &wanted, &uid, &mut deleted).await?;
    sweep(ctx, ns, &existing.hpas, &wanted, &uid, &mut deleted).await?;
    sweep(ctx, ns, &existing.cron_jobs, &wanted, &uid, &mut deleted).await?;
    sweep(ctx, ns, &existing.deployments, &wanted, &uid, &mut deleted).await?;
    sweep(ctx, ns, &existing.jobs, &wanted, &uid, &mut deleted).await?;
    sweep(ctx, ns, &existing.stateful_sets, &wanted, &uid, &mut deleted).await?;
    sweep(ctx, ns, &existing.services, &wanted, &uid, &mut deleted).await?;
    sweep(ctx, ns, &existing.config_maps, &wanted, &uid, &mut deleted).await?;
    // Policies last: a workload is gone before the policy that guarded it.
    sweep(ctx, ns, &existing.network_policies, &wanted, &uid, &mut deleted).await?;
    sweep(ctx, ns, &existing.secrets, &wanted, &uid, &mut deleted).await?;
    Ok(deleted)
}

/// Writes the status if it differs from the one stored (steady state writes nothing).
async fn write_status(cs: &ChatSystem, ctx: &Context, new: ChatSystemStatus) -> Result<(), Error> {
    if cs.status.as_ref() == Some(&new) {
        return Ok(());
    }
    let api: Api<ChatSystem> = Api::namespaced(ctx.client.clone(), &cs.namespace().unwrap_or_default());
    let body = serde_json::json!({
        "apiVersion": ChatSystem::api_version(&()),
        "kind": ChatSystem::kind(&()),
        "status": new,
    });
    api.patch_status(&cs.name_any(), &PatchParams::apply(MANAGER).force(), &Patch::Apply(&body))
        .await
        .map_err(Error::Status)?;
    Ok(())
}

async fn publish(ctx: &Context, cs: &ChatSystem, type_: EventType, reason: &str, action: &str, note: String) {
    publish_about(ctx, cs, type_, reason, action, note, None).await;
}

async fn publish_about(
    ctx: &Context,
    cs: &ChatSystem,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
    related: Option<ObjectReference>,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        // The API server refuses notes over 1 kB.
        note: Some(note.chars().take(1000).collect()),
        action: action.into(),
        secondary: related,
    };
    if let Err(err) = ctx.recorder.publish(&event, &cs.object_ref(&())).await {
        tracing::warn!(error = %err, "could not publish an event");
    }
}

/// A failed pass: a Warning event and `Degraded=True` with the error (best effort: the API
/// server may be what failed).
async fn report_failure(cs: &ChatSystem, ctx: &Context, err: &Error) {
    publish(ctx, cs, EventType::Warning, "ReconcileFailed", "Reconcile", err.to_string()).await;
    let new = status::failed(cs, &err.to_string(), Timestamp::now());
    if let Err(status_err) = write_status(cs, ctx, new).await {
        tracing::warn!(error = %status_err, "could not record the failure in the status");
    }
}
