//! Leader election with a `coordination.k8s.io` Lease, so that two replicas can run and only
//! one reconciles: the holder renews the Lease; another replica takes it over once it has not
//! been renewed for its duration. Every write carries the resourceVersion it read, so two
//! replicas never both take the same Lease.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};

/// One replica's side of the election.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

impl Elector {
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str, duration: Duration) -> Self {
        Self { api: Api::namespaced(client, namespace), name: name.into(), identity: identity.into(), duration }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// One attempt to take or renew the Lease: whether this replica holds it now.
    pub async fn try_lead(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let seconds = i32::try_from(self.duration.as_secs()).unwrap_or(i32::MAX);
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(self.name.clone()), ..ObjectMeta::default() },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false), // another replica was first
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_default();
        let ours = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        let held_for = SignedDuration::from_secs(spec.lease_duration_seconds.unwrap_or(seconds).into());
        let expired = spec.renew_time.as_ref().is_none_or(|t| t.0 + held_for < now);
        if !ours && !expired {
            return Ok(false);
        }
        if !ours {
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.lease_duration_seconds = Some(seconds);
        spec.renew_time = Some(MicroTime(now));
        // A replace with the resourceVersion read: it fails if anyone wrote the Lease since.
        match self.api.replace(&lease.name_any(), &PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits until this replica holds the Lease (trying every `retry`).
    pub async fn acquire(&self, retry: Duration) {
        loop {
            match self.try_lead().await {
                Ok(true) => return,
                Ok(false) => {}
                Err(err) => tracing::warn!(error = %err, "leader election: could not read or write the Lease"),
            }
            tokio::time::sleep(retry).await;
        }
    }

    /// Renews the Lease every third of its duration; returns once it could not be renewed for
    /// longer than its duration (another replica may lead now: stop reconciling).
    pub async fn keep(&self) {
        let mut last = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.duration / 3).await;
            match self.try_lead().await {
                Ok(true) => last = tokio::time::Instant::now(),
                Ok(false) => return,
                Err(err) => tracing::warn!(error = %err, "leader election: renewing the Lease failed"),
            }
            if last.elapsed() >= self.duration {
                return;
            }
        }
    }
}
