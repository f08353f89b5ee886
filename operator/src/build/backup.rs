//! Logical backups of the managed MariaDB: a CronJob that runs `mariadb-dump` into a claim of
//! its own and keeps the newest `keep` dumps.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec, JobSpec, JobTemplateSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EnvVar, EnvVarSource, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec, SeccompProfile, SecretKeySelector,
    SecurityContext, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::config::{DB_NAME, credentials_secret_name};
use super::{Ctx, Infra};

/// Where the dumps are, in the backup pod (and in a restore pod).
pub const BACKUP_DIR: &str = "/backups";
/// The pods' component label (the MariaDB NetworkPolicy admits it).
pub const COMPONENT: &str = "backup";

pub(super) fn claim_name(ctx: &Ctx) -> String {
    ctx.child("backups")
}

/// The shell script of one run: dump to a temporary file, rename it when complete (a failed
/// run leaves no file that looks like a backup), then delete all but the newest `$KEEP`.
const SCRIPT: &str = r#"set -eu
f="/backups/$DB_NAME-$(date -u +%Y%m%dT%H%M%SZ).sql.gz"
mariadb-dump --host="$DB_HOST" --user=root --single-transaction --quick --routines --events --databases "$DB_NAME" | gzip > "$f.partial"
mv "$f.partial" "$f"
ls -1t /backups/"$DB_NAME"-*.sql.gz | tail -n +$((KEEP + 1)) | xargs -r rm -f --
ls -l /backups"#;

/// The claim and the CronJob, when backups are on and MariaDB is managed.
pub(super) fn objects(ctx: &Ctx) -> Option<(PersistentVolumeClaim, CronJob)> {
    let backup = ctx.spec.backup.as_ref()?;
    let managed = Infra::Mysql.managed(ctx.spec)?;
    let claim = PersistentVolumeClaim {
        metadata: ctx.data_meta(claim_name(ctx), COMPONENT),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: backup.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".into(),
                    Quantity(backup.size.clone().unwrap_or_else(|| "20Gi".into())),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    };
    let value = |name: &str, value: String| EnvVar { name: name.into(), value: Some(value), ..EnvVar::default() };
    let container = Container {
        name: "mariadb-dump".into(),
        // The server's own image: its client matches the server.
        image: Some(managed.image.clone().unwrap_or_else(|| super::infra::default_image(Infra::Mysql).into())),
        command: Some(vec!["/bin/sh".into(), "-c".into(), SCRIPT.into()]),
        env: Some(vec![
            value("DB_HOST", ctx.child(Infra::Mysql.name())),
            value("DB_NAME", DB_NAME.into()),
            value("KEEP", backup.keep.to_string()),
            EnvVar {
                name: "MYSQL_PWD".into(),
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: credentials_secret_name(ctx),
                        key: "mysql-root-password".into(),
                        optional: None,
                    }),
                    ..EnvVarSource::default()
                }),
                ..EnvVar::default()
            },
        ]),
        resources: Some(backup.resources.clone().unwrap_or_else(super::resources::migration)),
        volume_mounts: Some(vec![VolumeMount {
            name: "backups".into(),
            mount_path: BACKUP_DIR.into(),
            ..VolumeMount::default()
        }]),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), add: None }),
            read_only_root_filesystem: Some(true),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };
    let pod = PodSpec {
        containers: vec![container],
        restart_policy: Some("Never".into()),
        volumes: Some(vec![Volume {
            name: "backups".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim_name(ctx),
                read_only: None,
            }),
            ..Volume::default()
        }]),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        security_context: Some(PodSecurityContext {
            // The mariadb image's user; fsGroup makes the claim writable by it.
            run_as_non_root: Some(true),
            run_as_user: Some(999),
            run_as_group: Some(999),
            fs_group: Some(999),
            seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..SeccompProfile::default() }),
            ..PodSecurityContext::default()
        }),
        ..PodSpec::default()
    };
    let cron = CronJob {
        metadata: ctx.meta(ctx.child("backup"), COMPONENT),
        spec: Some(CronJobSpec {
            schedule: backup.schedule.clone(),
            // One dump at a time; a missed run (operator or cluster down) is not made up later.
            concurrency_policy: Some("Forbid".into()),
            starting_deadline_seconds: Some(3600),
            successful_jobs_history_limit: Some(3),
            failed_jobs_history_limit: Some(3),
            job_template: JobTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(ctx.labels(COMPONENT)), ..ObjectMeta::default() }),
                spec: Some(JobSpec {
                    backoff_limit: Some(2),
                    template: PodTemplateSpec {
                        metadata: Some(ObjectMeta { labels: Some(ctx.labels(COMPONENT)), ..ObjectMeta::default() }),
                        spec: Some(pod),
                    },
                    ..JobSpec::default()
                }),
            },
            ..CronJobSpec::default()
        }),
        ..CronJob::default()
    };
    Some((claim, cron))
}
