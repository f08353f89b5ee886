//! The ChatSystem's status from what was applied: per-component readiness and the `Ready`,
//! `Progressing` and `Degraded` conditions. Pure; the clock is an argument.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use crate::build::{Component, Desired, Infra, JobState, gateway_endpoint};
use crate::crd::{ChatSystem, ChatSystemStatus, ComponentStatus, MigrationState, MigrationStatus};

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";

/// A condition before the bookkeeping fields are filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cond {
    pub type_: &'static str,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Cond {
    pub fn new(type_: &'static str, status: bool, reason: &'static str, message: impl Into<String>) -> Self {
        Self { type_, status, reason, message: message.into() }
    }
}

/// Sets `conds` on `old`: a condition's lastTransitionTime moves only when its status changes,
/// so an unchanged system yields an identical status (and no write).
pub fn set_conditions(old: &[Condition], conds: &[Cond], generation: Option<i64>, now: Timestamp) -> Vec<Condition> {
    let mut out: Vec<Condition> = old.to_vec();
    for cond in conds {
        let status = if cond.status { "True" } else { "False" };
        let previous = old.iter().find(|c| c.type_ == cond.type_);
        let last_transition_time = match previous {
            Some(p) if p.status == status => p.last_transition_time.clone(),
            _ => Time(now),
        };
        let new = Condition {
            type_: cond.type_.into(),
            status: status.into(),
            reason: cond.reason.into(),
            message: cond.message.clone(),
            observed_generation: generation,
            last_transition_time,
        };
        match out.iter_mut().find(|c| c.type_ == cond.type_) {
            Some(slot) => *slot = new,
            None => out.push(new),
        }
    }
    // Fixed order, whatever order they were added in.
    let rank = |t: &str| [READY, PROGRESSING, DEGRADED].iter().position(|x| *x == t).unwrap_or(usize::MAX);
    out.sort_by(|a, b| rank(&a.type_).cmp(&rank(&b.type_)).then(a.type_.cmp(&b.type_)));
    out
}

/// What was applied this pass, with the status the API server returned for it.
pub struct Applied<'a> {
    pub desired: &'a Desired,
    pub deployments: &'a [Deployment],
    pub stateful_sets: &'a [StatefulSet],
    pub public_service: Option<&'a Service>,
}

fn deployment_status(d: &Deployment) -> (ComponentStatus, bool) {
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let st = d.status.clone().unwrap_or_default();
    let ready = st.ready_replicas.unwrap_or(0);
    // Rolled out: the controller saw this generation, every pod runs it, no old pods remain.
    let current = st.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0);
    let done = current
        && st.updated_replicas.unwrap_or(0) >= want
        && st.replicas.unwrap_or(0) == want
        && st.available_replicas.unwrap_or(0) >= want
        && ready >= want;
    (ComponentStatus { ready_replicas: ready, replicas: want }, done)
}

fn stateful_set_status(s: &StatefulSet) -> (ComponentStatus, bool) {
    let want = s.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let st = s.status.clone().unwrap_or_default();
    let ready = st.ready_replicas.unwrap_or(0);
    let current = st.observed_generation.unwrap_or(0) >= s.metadata.generation.unwrap_or(0);
    let done = current && st.updated_replicas.unwrap_or(0) >= want && ready >= want;
    (ComponentStatus { ready_replicas: ready, replicas: want }, done)
}

/// The image tag after the last `:` (the registry may have a port, the tag has no `/`).
pub fn tag_of(image: &str) -> &str {
    match image.rsplit_once(':') {
        Some((_, tag)) if !tag.contains('/') => tag,
        _ => "latest",
    }
}

/// The status after a successful pass.
pub fn compute(cs: &ChatSystem, applied: &Applied, now: Timestamp) -> ChatSystemStatus {
    let desired = applied.desired;
    let name = cs.name_any();
    let mut components = BTreeMap::new();
    let mut not_ready = vec![];
    let mut rolling = vec![];

    for component in Component::ALL {
        let dep_name = format!("{name}-{}", component.name());
        let found = applied.deployments.iter().find(|d| d.metadata.name.as_deref() == Some(dep_name.as_str()));
        let (status, done) = match found {
            Some(d) => deployment_status(d),
            None => {
                let want = component_replicas(cs, component);
                (ComponentStatus { ready_replicas: 0, replicas: want }, want == 0)
            }
        };
        if status.ready_replicas < status.replicas {
            not_ready.push(format!("{} {}/{}", component.name(), status.ready_replicas, status.replicas));
        }
        if !done {
            rolling.push(component.name());
        }
        components.insert(component.name().to_string(), status);
    }
    for infra in Infra::ALL {
        let sts_name = format!("{name}-{}", infra.name());
        if let Some(sts) = applied.stateful_sets.iter().find(|s| s.metadata.name.as_deref() == Some(sts_name.as_str()))
        {
            let (status, done) = stateful_set_status(sts);
            if status.ready_replicas < status.replicas {
                not_ready.push(format!("{} {}/{}", infra.name(), status.ready_replicas, status.replicas));
            }
            if !done {
                rolling.push(infra.name());
            }
            components.insert(infra.name().to_string(), status);
        }
    }

    // The version that runs: the tag every Deployment has (none while they differ or wait).
    let images: Vec<&str> = applied
        .deployments
        .iter()
        .filter_map(|d| d.spec.as_ref()?.template.spec.as_ref()?.containers.first()?.image.as_deref())
        .collect();
    let version = match images.first() {
        Some(first) if images.iter().all(|i| i == first) => Some(tag_of(first).to_string()),
        _ => None,
    };

    let migration_state = match desired.migration_state {
        Some(JobState::Succeeded) => MigrationState::Succeeded,
        Some(JobState::Failed) => MigrationState::Failed,
        Some(JobState::Running) | None => MigrationState::Running,
    };
    let target_tag = tag_of(&desired.target_image).to_string();

    let mut conds = vec![];
    conds.push(if not_ready.is_empty() {
        Cond::new(READY, true, "AllComponentsReady", "every service and server has its ready replicas")
    } else {
        Cond::new(READY, false, "ComponentsNotReady", format!("not ready: {}", not_ready.join(", ")))
    });
    let held: Vec<&str> = desired.held.iter().map(|c| c.name()).collect();
    conds.push(if migration_state == MigrationState::Failed {
        Cond::new(
            PROGRESSING,
            false,
            "MigrationFailed",
            format!("{target_tag} is not rolled out: its migration failed"),
        )
    } else if !held.is_empty() {
        Cond::new(
            PROGRESSING,
            true,
            "MigrationRunning",
            format!("waiting for Job {} before rolling {target_tag} to: {}", desired.migration_job, held.join(", ")),
        )
    } else if !rolling.is_empty() {
        Cond::new(PROGRESSING, true, "RollingOut", format!("rolling out: {}", rolling.join(", ")))
    } else {
        Cond::new(PROGRESSING, false, "RolloutComplete", format!("everything runs {target_tag}"))
    });
    conds.push(if migration_state == MigrationState::Failed {
        Cond::new(
            DEGRADED,
            true,
            "MigrationFailed",
            format!("schema migration Job {} failed; services stay on their current image", desired.migration_job),
        )
    } else {
        Cond::new(DEGRADED, false, "AsExpected", "")
    });

    let old = cs.status.clone().unwrap_or_default();
    let generation = cs.metadata.generation;
    ChatSystemStatus {
        observed_generation: generation,
        conditions: set_conditions(&old.conditions, &conds, generation, now),
        components,
        gateway_endpoint: Some(gateway_endpoint(cs, applied.public_service)),
        version,
        migration: Some(MigrationStatus {
            job: desired.migration_job.clone(),
            image: desired.target_image.clone(),
            state: migration_state,
            ..MigrationStatus::default()
        }),
    }
}

fn component_replicas(cs: &ChatSystem, component: Component) -> i32 {
    let s = &cs.spec.services;
    match component {
        Component::Gateway => s.gateway.replicas,
        Component::User => s.user.replicas,
        Component::Friend => s.friend.replicas,
        Component::File => s.file.replicas,
        Component::Message => s.message.replicas,
        Component::Transmit => s.transmit.replicas,
        Component::Speech => s.speech.replicas,
    }
}

/// The status when the spec cannot be acted on (e.g. a referenced Secret is missing): nothing
/// was applied, so the rest of the status stays as it was.
pub fn invalid(cs: &ChatSystem, problems: &[String], now: Timestamp) -> ChatSystemStatus {
    let mut status = cs.status.clone().unwrap_or_default();
    let generation = cs.metadata.generation;
    let mut conds = vec![
        Cond::new(PROGRESSING, false, "InvalidSpec", "the spec cannot be acted on until it is fixed"),
        Cond::new(DEGRADED, true, "InvalidSpec", problems.join("; ")),
    ];
    // A system already running keeps serving (its Ready stays); a new one is not ready.
    if !status.conditions.iter().any(|c| c.type_ == READY) {
        conds.push(Cond::new(READY, false, "InvalidSpec", "nothing is deployed until the spec is fixed"));
    }
    status.conditions = set_conditions(&status.conditions, &conds, generation, now);
    status.observed_generation = generation;
    status
}

/// The status while `spec.paused` is set.
pub fn paused(cs: &ChatSystem, now: Timestamp) -> ChatSystemStatus {
    let mut status = cs.status.clone().unwrap_or_default();
    let generation = cs.metadata.generation;
    let conds =
        [Cond::new(PROGRESSING, false, "ReconciliationPaused", "spec.paused is true: the operator changes nothing")];
    status.conditions = set_conditions(&status.conditions, &conds, generation, now);
    status.observed_generation = generation;
    status
}

/// The status after a failed pass (an API error): Degraded with the error, the rest unchanged.
pub fn failed(cs: &ChatSystem, error: &str, now: Timestamp) -> ChatSystemStatus {
    let mut status = cs.status.clone().unwrap_or_default();
    let conds = [Cond::new(DEGRADED, true, "ReconcileError", error)];
    status.conditions = set_conditions(&status.conditions, &conds, cs.metadata.generation, now);
    status
}

/// The condition of that type, if set.
pub fn condition<'a>(status: Option<&'a ChatSystemStatus>, type_: &str) -> Option<&'a Condition> {
    status?.conditions.iter().find(|c| c.type_ == type_)
}
