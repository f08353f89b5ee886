//! chatmesh's Kubernetes operator: one `ChatSystem` resource reconciles a whole chatmesh.
//!
//! A pass is a pipeline (after Stackable's operator-rs): read the cluster (`reconcile`) ->
//! validate (`validate`, pure) -> build the desired objects (`build`, pure) -> server-side apply
//! in a fixed order and delete orphans (`reconcile`) -> status (`status`, pure).

pub mod build;
pub mod controller;
pub mod crd;
pub mod leader;
pub mod metrics;
pub mod reconcile;
pub mod status;
pub mod tls;
pub mod validate;

/// Why a reconcile pass failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("ChatSystem {0} has no namespace")]
    NoNamespace(String),
    #[error("applying {kind} {name}: {source}")]
    Apply {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("deleting {kind} {name}: {source}")]
    Delete {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("reading {what}: {source}")]
    Read {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("writing the status: {0}")]
    Status(#[source] kube::Error),
    #[error(
        "the credentials Secret {secret} lacks {keys:?} while the data volumes {claims:?} exist: the servers accept only the passwords their data was made with, so none are generated; restore those keys (e.g. from a backup of the Secret) or delete the claims to start empty"
    )]
    CredentialsLost { secret: String, keys: Vec<String>, claims: Vec<String> },
    #[error("internal TLS: {0}")]
    Tls(#[from] tls::TlsError),
}

impl Error {
    /// A short, bounded label for the errors metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::NoNamespace(_) => "no_namespace",
            Self::Apply { .. } => "apply",
            Self::Delete { .. } => "delete",
            Self::Read { .. } => "read",
            Self::Status(_) => "status",
            Self::CredentialsLost { .. } => "credentials_lost",
            Self::Tls(_) => "tls",
        }
    }
}

/// Makes ring rustls's process-wide provider. kube builds its TLS config from the default
/// provider, which rustls cannot pick by itself once anything in the build also enables
/// aws-lc-rs. Call before the first client; later calls do nothing.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
