//! The operator process: watches ChatSystems (and the children it owns) and reconciles each.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chatmesh_operator::build::{Defaults, MANAGER};
use chatmesh_operator::crd::ChatSystem;
use chatmesh_operator::reconcile::{self, Context};
use clap::Parser;
use futures_util::StreamExt;
use kube::Client;
use kube::api::{Api, ListParams};
use kube::runtime::events::{Recorder, Reporter};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Parser)]
#[command(name = "chatmesh-operator", version, about = "Reconciles ChatSystem resources into running chatmesh systems")]
struct Cli {
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "CHATMESH_OPERATOR_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Watch only this namespace [default: all namespaces].
    #[arg(long, env = "CHATMESH_OPERATOR_NAMESPACE")]
    namespace: Option<String>,
    /// Look at every ChatSystem again after this long, changed or not.
    #[arg(long, env = "CHATMESH_OPERATOR_RESYNC", default_value = "5m", value_parser = parse_duration)]
    resync: Duration,
    /// Image tag for ChatSystems that set none [default: the operator's version].
    #[arg(long, env = "CHATMESH_OPERATOR_DEFAULT_TAG")]
    default_tag: Option<String>,
    /// Name of this replica in Events (e.g. the pod name).
    #[arg(long, env = "CHATMESH_OPERATOR_POD_NAME")]
    pod_name: Option<String>,
    /// Log filter, e.g. `info` or `info,kube=debug`.
    #[arg(long, env = "CHATMESH_OPERATOR_LOG", default_value = "info")]
    log: String,
    #[arg(long, env = "CHATMESH_OPERATOR_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Reconcile only while holding the Lease `chatmesh-operator` (so replicas can run side by
    /// side); `false` for a single replica that needs no Lease.
    #[arg(long, env = "CHATMESH_OPERATOR_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Namespace of that Lease [default: the client's namespace, in a pod its own].
    #[arg(long, env = "CHATMESH_OPERATOR_LEASE_NAMESPACE")]
    lease_namespace: Option<String>,
}

/// `30s`, `5m`, `1h` or plain seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let (number, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = number.parse().map_err(|_| format!("not a duration: {s:?}"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("unknown unit in {s:?} (use s, m or h)")),
    };
    Ok(Duration::from_secs(secs))
}

fn init_logs(filter: &str, format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    init_logs(&cli.log, cli.log_format);
    chatmesh_operator::install_tls_provider();
    chatmesh_operator::metrics::handle();
    let server = tokio::spawn(chatmesh_operator::metrics::serve(cli.listen));

    let client = Client::try_default().await?;
    let version = client.apiserver_version().await?;
    tracing::info!(server = %version.git_version, "connected to the API server");

    let chat_systems: Api<ChatSystem> = match &cli.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    // Fail early and clearly when the CRD is missing, rather than a watcher retrying forever.
    if let Err(err) = chat_systems.list(&ListParams::default().limit(1)).await {
        return Err(format!("cannot list ChatSystems ({err}); is crds/chatmesh.io_chatsystems.yaml applied?").into());
    }
    chatmesh_operator::metrics::READY.store(true, Ordering::Relaxed);

    // A standby replica is ready (it serves its probes) but reconciles nothing until it leads.
    let elector = cli.leader_election.then(|| {
        let ns = cli.lease_namespace.clone().unwrap_or_else(|| client.default_namespace().to_string());
        let identity =
            cli.pod_name.clone().unwrap_or_else(|| format!("chatmesh-operator-{:08x}", rand::random::<u32>()));
        chatmesh_operator::leader::Elector::new(client.clone(), &ns, MANAGER, &identity, Duration::from_secs(15))
    });
    if let Some(elector) = &elector {
        tracing::info!(identity = elector.identity(), "waiting to lead (Lease {MANAGER})");
        elector.acquire(Duration::from_secs(2)).await;
        tracing::info!(identity = elector.identity(), "leading");
    }
    let lost = async {
        match &elector {
            Some(elector) => elector.keep().await,
            None => std::future::pending().await,
        }
    };

    let reporter = Reporter { controller: MANAGER.into(), instance: cli.pod_name.clone() };
    let ctx = Arc::new(Context {
        client: client.clone(),
        recorder: Recorder::new(client.clone(), reporter),
        defaults: cli.default_tag.clone().map(|tag| Defaults { tag }).unwrap_or_default(),
        requeue: cli.resync,
    });

    let controller = chatmesh_operator::controller::controller(&client, cli.namespace.as_deref())
        .shutdown_on_signal()
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|result| async move {
            if let Err(err) = result {
                tracing::debug!(error = %err, "reconcile attempt failed");
            }
        });
    tokio::select! {
        () = controller => tracing::info!("controller stopped"),
        // Exit rather than race the new leader; the pod restarts as a standby.
        () = lost => return Err("lost the leader Lease".into()),
        result = server => {
            result??;
            return Err("the health and metrics server stopped".into());
        }
    }
    Ok(())
}
