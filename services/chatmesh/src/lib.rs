//! The one chatmesh binary: `--target gateway|user|friend|file|message|transmit|speech|migrate|reindex|all`. Each target is a service
//! library under `services/`; this crate only parses configuration and wires them together.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chatmesh_common::grpc::{self, GrpcChannel};
use chatmesh_common::health::{Health, Link};
use chatmesh_common::mesh::Service;
use chatmesh_common::mesh::tls::{MeshTls, TlsFiles};
use chatmesh_common::queue::MessageQueue;
use chatmesh_common::search::SearchIndex;
use chatmesh_common::telemetry::LogFormat;
use chatmesh_common::{Database, ExpiringStore, LoginSessions};
use clap::Parser;
use tokio::sync::watch;
use tonic::body::Body;
use tonic::codegen::Service as GrpcServer;
use tonic::codegen::http::{Request, Response};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// Every service in one process (the standalone mode).
    All,
    Gateway,
    User,
    File,
    Friend,
    Message,
    Transmit,
    Speech,
    /// Bring the database schema up to date, then exit.
    Migrate,
    /// Write every stored message and user into the search index again, then exit.
    Reindex,
}

#[derive(Debug, Clone, Parser)]
#[command(name = "chatmesh", version, about = "chatmesh: an instant-messaging backend")]
pub struct Cli {
    /// Which services this process runs (comma-separated).
    #[arg(long, env = "CHATMESH_TARGET", value_enum, value_delimiter = ',', default_value = "all")]
    pub target: Vec<Target>,
    /// Local state: the SQLite database and files when no other backends are set.
    #[arg(long, env = "CHATMESH_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// Relational database: `mysql://user:pass@host:3306/db` or `sqlite://path` [default: SQLite in the data dir].
    #[arg(long, env = "CHATMESH_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    #[arg(long, env = "CHATMESH_DATABASE_MAX_CONNECTIONS", default_value_t = 16)]
    pub database_max_connections: u32,
    /// Sessions, codes and rate limits: `redis://host:6379` or `memory://` (one process only).
    #[arg(long, env = "CHATMESH_REDIS_URL", default_value = "memory://", hide_env_values = true)]
    pub redis_url: String,
    /// Prefix of every Redis key, so systems can share one Redis.
    #[arg(long, env = "CHATMESH_REDIS_NAMESPACE", default_value = "chatmesh")]
    pub redis_namespace: String,
    /// User and message search: `http(s)://` for Elasticsearch, or `embedded://` (the database).
    #[arg(long, env = "CHATMESH_SEARCH_URL", default_value = "embedded://", hide_env_values = true)]
    pub search_url: String,
    /// Prefix of the Elasticsearch index names, so systems can share one cluster.
    #[arg(long, env = "CHATMESH_SEARCH_INDEX_PREFIX", default_value = "chatmesh")]
    pub search_index_prefix: String,
    /// Message queue: `amqp://user:pass@host:5672/%2f` (RabbitMQ), `database://` (a table of the
    /// database: survives a crash; one consuming process) or `memory://` (in the process, lost with it).
    #[arg(long, env = "CHATMESH_AMQP_URL", default_value = "database://", hide_env_values = true)]
    pub amqp_url: String,
    /// The durable queue messages travel through to storage.
    #[arg(long, env = "CHATMESH_AMQP_QUEUE", default_value = "chatmesh.messages")]
    pub amqp_queue: String,
    /// How long a send keeps retrying the broker before it reports failure.
    #[arg(long, env = "CHATMESH_PUBLISH_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub publish_timeout: Duration,
    /// How long message storage gathers queued messages into one batch (one insert, one bulk
    /// index, one acknowledgement) after the first arrived: history sees a message up to this
    /// much later; pushes never wait for it.
    #[arg(long, env = "CHATMESH_STORAGE_BATCH_WINDOW", default_value_t = chatmesh_common::queue::BATCH_WINDOW.into())]
    pub storage_batch_window: humantime::Duration,
    /// Directory of uploaded files [default: `<data-dir>/files`].
    #[arg(long, env = "CHATMESH_FILES_DIR")]
    pub files_dir: Option<PathBuf>,
    /// Run schema migrations at start (the operator runs them in a Job instead).
    #[arg(long, env = "CHATMESH_AUTO_MIGRATE", default_value_t = true, action = clap::ArgAction::Set)]
    pub auto_migrate: bool,
    /// On SIGTERM: stop accepting, then let work in flight finish for at most this long before
    /// exiting anyway (whatever a broken connection is doing).
    #[arg(long, env = "CHATMESH_SHUTDOWN_GRACE", default_value = "20s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
    /// On SIGTERM, first serve on as usual for this long (with `/readyz` answering 503), then
    /// stop. Clients that resolve the services by DNS learn of the pod's replacement only at
    /// their next refresh: set it above `--dns-refresh` plus the DNS server's TTL where a
    /// rolling update replaces pods (the operator does).
    #[arg(long, env = "CHATMESH_SHUTDOWN_DELAY", default_value = "0s", value_parser = humantime::parse_duration)]
    pub shutdown_delay: Duration,
    /// Login sessions end after this long without use.
    #[arg(long, env = "CHATMESH_SESSION_TTL", default_value = "7d", value_parser = humantime::parse_duration)]
    pub session_ttl: Duration,
    /// Login sessions end this long after login, however much they are used.
    #[arg(long, env = "CHATMESH_SESSION_MAX_AGE", default_value = "30d", value_parser = humantime::parse_duration)]
    pub session_max_age: Duration,

    #[arg(long, env = "CHATMESH_HTTP_LISTEN", default_value = "0.0.0.0:9000")]
    pub http_listen: SocketAddr,
    #[arg(long, env = "CHATMESH_WS_LISTEN", default_value = "0.0.0.0:9001")]
    pub ws_listen: SocketAddr,
    #[arg(long, env = "CHATMESH_SPEECH_LISTEN", default_value = "127.0.0.1:10001")]
    pub speech_listen: SocketAddr,
    #[arg(long, env = "CHATMESH_FILE_LISTEN", default_value = "127.0.0.1:10002")]
    pub file_listen: SocketAddr,
    #[arg(long, env = "CHATMESH_USER_LISTEN", default_value = "127.0.0.1:10003")]
    pub user_listen: SocketAddr,
    #[arg(long, env = "CHATMESH_TRANSMIT_LISTEN", default_value = "127.0.0.1:10004")]
    pub transmit_listen: SocketAddr,
    #[arg(long, env = "CHATMESH_MESSAGE_LISTEN", default_value = "127.0.0.1:10005")]
    pub message_listen: SocketAddr,
    #[arg(long, env = "CHATMESH_FRIEND_LISTEN", default_value = "127.0.0.1:10006")]
    pub friend_listen: SocketAddr,
    /// Health (`/healthz`, `/readyz`) and Prometheus `/metrics` of this process.
    #[arg(long, env = "CHATMESH_ADMIN_LISTEN", default_value = "127.0.0.1:9100")]
    pub admin_listen: SocketAddr,

    /// This process's certificate (PEM) for internal calls; with `--tls-key` and `--tls-ca`,
    /// every internal gRPC connection is mutual TLS. It must name the services this process
    /// runs (URI SANs `spiffe://chatmesh.io/service/<name>`).
    #[arg(long, env = "CHATMESH_TLS_CERT", requires_all = ["tls_key", "tls_ca"])]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, env = "CHATMESH_TLS_KEY", requires_all = ["tls_cert", "tls_ca"])]
    pub tls_key: Option<PathBuf>,
    /// CA certificates (PEM) that internal peers' certificates must chain to.
    #[arg(long, env = "CHATMESH_TLS_CA", requires_all = ["tls_cert", "tls_key"])]
    pub tls_ca: Option<PathBuf>,
    /// How often the TLS files are checked for changes (a mounted Secret is updated in place).
    #[arg(long, env = "CHATMESH_TLS_RELOAD_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub tls_reload_interval: Duration,

    #[arg(long, env = "CHATMESH_SPEECH_ADDR", default_value = "http://127.0.0.1:10001")]
    pub speech_addr: String,
    /// Where the file service is (in Kubernetes: its headless Service name).
    #[arg(long, env = "CHATMESH_FILE_ADDR", default_value = "http://127.0.0.1:10002")]
    pub file_addr: String,
    #[arg(long, env = "CHATMESH_USER_ADDR", default_value = "http://127.0.0.1:10003")]
    pub user_addr: String,
    #[arg(long, env = "CHATMESH_TRANSMIT_ADDR", default_value = "http://127.0.0.1:10004")]
    pub transmit_addr: String,
    #[arg(long, env = "CHATMESH_MESSAGE_ADDR", default_value = "http://127.0.0.1:10005")]
    pub message_addr: String,
    #[arg(long, env = "CHATMESH_FRIEND_ADDR", default_value = "http://127.0.0.1:10006")]
    pub friend_addr: String,
    /// Deadline of one call between services.
    #[arg(long, env = "CHATMESH_RPC_TIMEOUT", default_value = "15s", value_parser = humantime::parse_duration)]
    pub rpc_timeout: Duration,
    /// How often service names are resolved again (picks up scaled Deployments).
    #[arg(long, env = "CHATMESH_DNS_REFRESH", default_value = "5s", value_parser = humantime::parse_duration)]
    pub dns_refresh: Duration,

    /// Log filter, e.g. `info` or `info,chatmesh_user=debug`.
    #[arg(long, env = "CHATMESH_LOG", default_value = "info")]
    pub log: String,
    #[arg(long, env = "CHATMESH_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    #[command(flatten)]
    pub traces: chatmesh_common::trace::TraceArgs,

    #[command(flatten)]
    pub gateway: chatmesh_gateway::GatewayArgs,
    #[command(flatten)]
    pub user: chatmesh_user::UserArgs,
    #[command(flatten)]
    pub file: chatmesh_file::FileArgs,
    #[command(flatten)]
    pub transmit: chatmesh_transmit::TransmitArgs,
    #[command(flatten)]
    pub speech: chatmesh_speech::SpeechArgs,
}

impl Cli {
    /// Installs logs and, with `--otlp-endpoint`, the trace exporter (inside Tokio). Keep the
    /// result and shut it down at exit, so the last spans are sent.
    pub fn init_telemetry(&self) -> anyhow::Result<Option<chatmesh_common::trace::Traces>> {
        let names: Vec<String> = self.target.iter().map(|t| format!("{t:?}").to_lowercase()).collect();
        let service = format!("chatmesh-{}", names.join("+"));
        let traces = chatmesh_common::trace::Traces::start(&self.traces, &service)?;
        chatmesh_common::telemetry::init(&self.log, self.log_format, traces.as_ref());
        Ok(traces)
    }

    fn runs(&self, target: Target) -> bool {
        self.target.contains(&target) || self.target.contains(&Target::All)
    }

    fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}/chatmesh.db?mode=rwc", self.data_dir.display()))
    }

    /// The services this process serves over gRPC (the gateway only calls).
    fn services(&self) -> Vec<Service> {
        let map = [
            (Target::Gateway, Service::Gateway),
            (Target::User, Service::User),
            (Target::Friend, Service::Friend),
            (Target::File, Service::File),
            (Target::Message, Service::Message),
            (Target::Transmit, Service::Transmit),
            (Target::Speech, Service::Speech),
        ];
        map.into_iter().filter(|(t, _)| self.runs(*t)).map(|(_, s)| s).collect()
    }

    /// The mesh's certificates, when configured; they must name every service this process runs.
    fn mesh_tls(&self) -> anyhow::Result<Option<MeshTls>> {
        let (Some(cert), Some(key), Some(ca)) = (&self.tls_cert, &self.tls_key, &self.tls_ca) else {
            return Ok(None);
        };
        let files = TlsFiles { cert: cert.clone(), key: key.clone(), ca: ca.clone() };
        let tls = MeshTls::load(files, self.tls_reload_interval).context("internal TLS")?;
        let named = tls.current().identity.clone();
        let missing: Vec<&str> = self.services().into_iter().filter(|s| !named.contains(s)).map(|s| s.name()).collect();
        anyhow::ensure!(
            missing.is_empty(),
            "the TLS certificate {} does not name {} (it names {named:?}); peers would refuse this process's calls",
            cert.display(),
            missing.join(", ")
        );
        Ok(Some(tls))
    }

    /// Internal ports without the mesh are for this host alone; say so when one is wider.
    fn warn_exposed(&self, tls: bool) {
        if tls {
            return;
        }
        let internal = [
            (Target::Speech, self.speech_listen),
            (Target::File, self.file_listen),
            (Target::User, self.user_listen),
            (Target::Transmit, self.transmit_listen),
            (Target::Message, self.message_listen),
            (Target::Friend, self.friend_listen),
        ];
        for (target, addr) in internal.into_iter().filter(|(t, _)| self.runs(*t)) {
            if !addr.ip().is_loopback() {
                tracing::warn!(
                    %addr, service = ?target,
                    "internal port open beyond this host without TLS: anyone who reaches it can act as any user \
                     (set --tls-cert/--tls-key/--tls-ca, or listen on 127.0.0.1)"
                );
            }
        }
    }
}

/// The backends this process's targets need, each opened once and shared.
struct Backends {
    /// Every long-lived connection's state; `/readyz` reads it.
    health: Health,
    db_link: Arc<Link>,
    kv_link: Arc<Link>,
    db: Option<Database>,
    kv: Option<Arc<dyn ExpiringStore>>,
    index: Option<Arc<dyn SearchIndex>>,
    queue: Option<Arc<dyn MessageQueue>>,
    /// Counted in readiness only where speech runs alone: a standalone process without the
    /// offline model still serves everything else.
    speech: Option<chatmesh_speech::SpeechRecognizer>,
    speech_alone: bool,
    /// Every port of the process listens. The admin port opens first, so without this a pod
    /// was Ready (and a test sent) while its gateway was still opening the push bus.
    serving: std::sync::atomic::AtomicBool,
    /// A shutdown signal came: still serving, but no longer ready.
    stopping: std::sync::atomic::AtomicBool,
}

impl Backends {
    async fn open(cli: &Cli) -> anyhow::Result<Self> {
        let any = |ts: &[Target]| ts.iter().any(|t| cli.runs(*t));
        use Target::*;
        let health = Health::default();
        let db = if any(&[User, File, Friend, Message, Transmit, Migrate, Reindex]) {
            std::fs::create_dir_all(&cli.data_dir).with_context(|| format!("creating {}", cli.data_dir.display()))?;
            let url = cli.database_url();
            let db = Database::connect(&url, cli.database_max_connections)
                .await
                .with_context(|| format!("connecting to {}", chatmesh_common::db::redact(&url)))?;
            if cli.auto_migrate || cli.target.contains(&Migrate) {
                db.migrate().await.context("migrating the database")?;
            }
            Some(db)
        } else {
            None
        };
        let kv_link = health.link("session-store", any(&[Gateway, User]));
        let kv = if any(&[Gateway, User]) {
            if cli.redis_url.starts_with("memory:") && !cli.runs(All) {
                tracing::warn!("memory:// sessions are private to this process; use Redis when services run apart");
            }
            let kv = chatmesh_common::kv::open_tracked(&cli.redis_url, &cli.redis_namespace, kv_link.clone()).await;
            Some(kv.context("opening the session store")?)
        } else {
            None
        };
        let index = match &db {
            Some(db) if any(&[User, Friend, Message, Reindex]) => Some(
                chatmesh_common::search::open(&cli.search_url, &cli.search_index_prefix, db)
                    .await
                    .context("opening the search index")?,
            ),
            _ => None,
        };
        let queue = if any(&[Transmit, Message]) {
            let roles = chatmesh_common::queue::Roles { publish: cli.runs(Transmit), consume: cli.runs(Message) };
            let queue = chatmesh_common::queue::open(
                &cli.amqp_url,
                &cli.amqp_queue,
                cli.publish_timeout,
                *cli.storage_batch_window,
                db.as_ref(),
                &health,
                roles,
            );
            Some(queue.context("opening the message queue")?)
        } else {
            None
        };
        let speech = if cli.runs(Speech) {
            Some(chatmesh_speech::SpeechRecognizer::from_args(&cli.speech, &cli.data_dir).context("speech provider")?)
        } else {
            None
        };
        let db_link = health.link("database", db.is_some());
        let speech_alone = cli.target == [Speech];
        let (serving, stopping) = (false.into(), false.into());
        Ok(Self { health, db_link, kv_link, db, kv, index, queue, speech, speech_alone, serving, stopping })
    }

    /// Probes the database and the session store now and then, with deadlines, so their links
    /// (readiness, logs, reconnect counts) follow them even when no request does.
    async fn watch(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        const PROBE: Duration = Duration::from_secs(1);
        loop {
            if let Some(db) = &self.db {
                let ping = tokio::time::timeout(PROBE, sqlx::query("SELECT 1").execute(&db.pool)).await;
                let _ = self
                    .db_link
                    .track(ping.map_err(|_| "no answer".to_string()).and_then(|r| r.map_err(|e| e.to_string())));
            }
            if let Some(kv) = &self.kv {
                let ping = tokio::time::timeout(PROBE, kv.ping()).await;
                let _ = self
                    .kv_link
                    .track(ping.map_err(|_| "no answer".to_string()).and_then(|r| r.map_err(|e| e.to_string())));
            }
            tokio::select! {
                _ = tokio::time::sleep(PROBE) => {}
                _ = chatmesh_common::stopped(&mut shutdown) => return,
            }
        }
    }

    /// Readiness: every required connection is up. Answers at once, whatever the backends do.
    async fn check(&self) -> Result<(), String> {
        if !self.serving.load(std::sync::atomic::Ordering::SeqCst) {
            return Err("starting: not every port listens yet".into());
        }
        if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            return Err("stopping: serving on until the shutdown delay ends".into());
        }
        self.health.check()?;
        if let Some(speech) = self.speech.as_ref().filter(|_| self.speech_alone) {
            tokio::time::timeout(Duration::from_secs(2), speech.ready()).await.map_err(|_| "speech: no answer")??;
        }
        Ok(())
    }
}

/// Runs the configured targets until `signal` turns true and `--shutdown-delay` has passed (or
/// one of them fails).
pub async fn run(cli: Cli, signal: watch::Receiver<bool>) -> anyhow::Result<()> {
    let tls = cli.mesh_tls()?;
    cli.warn_exposed(tls.is_some());
    let backends = Arc::new(Backends::open(&cli).await?);
    let shutdown = delayed(signal, cli.shutdown_delay, backends.clone());
    if cli.target == [Target::Migrate] {
        tracing::info!("database schema is up to date");
        return Ok(());
    }
    if cli.target == [Target::Reindex] {
        let (db, index) = (backends.db.as_ref().expect("db for reindex"), backends.index.as_ref().expect("index"));
        let (messages, users) = chatmesh_common::search::rebuild(db, index.as_ref()).await.context("reindexing")?;
        tracing::info!(messages, users, "search index rebuilt from the database");
        return Ok(());
    }
    let (db, kv, index, queue) = (&backends.db, &backends.kv, &backends.index, &backends.queue);
    let sessions = kv.clone().map(|kv| LoginSessions::with_max_age(kv, cli.session_ttl, cli.session_max_age));
    // Gateways resolve a session on every request: cached while revocations are followed.
    let sessions = match sessions {
        Some(s) if cli.runs(Target::Gateway) => {
            Some(s.followed(&cli.redis_url, &cli.redis_namespace, shutdown.clone()).context("following sessions")?)
        }
        other => other,
    };
    // Metrics render from this process-wide recorder (installed before any request counts).
    chatmesh_common::telemetry::metrics();

    let mut tasks = tokio::task::JoinSet::new();
    let spawn_http = |tasks: &mut tokio::task::JoinSet<anyhow::Result<()>>, listener, router: axum::Router| {
        let mut stop = shutdown.clone();
        tasks.spawn(async move {
            let stopped = async move { chatmesh_common::stopped(&mut stop).await };
            axum::serve(listener, router).with_graceful_shutdown(stopped).await.map_err(anyhow::Error::from)
        });
    };

    tokio::spawn(backends.clone().watch(shutdown.clone()));
    let admin = admin_router(backends.clone());
    spawn_http(&mut tasks, grpc::bind(cli.admin_listen).await?, admin);

    let grpc_server = || grpc::server(tls.is_some());
    let mut clients = Clients { cli: &cli, tls: tls.as_ref(), here: HashMap::new(), transmit_here: None };
    let mut grpc_routes: Vec<(SocketAddr, grpc::MeshRouter)> = Vec::new();
    // Session members, read on every send: cached in transmit while their changes reach it.
    let members = match cli.runs(Target::Transmit) {
        true => Some(chatmesh_common::members::open(
            db.clone().expect("db for transmit"),
            &cli.redis_url,
            &cli.redis_namespace,
            cli.runs(Target::Friend),
            shutdown.clone(),
        )?),
        false => None,
    };
    if cli.runs(Target::File) {
        let dir = cli.files_dir.clone().unwrap_or_else(|| cli.data_dir.join("files"));
        let svc = chatmesh_file::service(&cli.file, db.clone().expect("db for file"), dir);
        clients.serve_here(Service::File, svc.clone());
        grpc_routes.push((cli.file_listen, grpc_server().add_service(svc)));
    }
    if cli.runs(Target::User) {
        let sms = chatmesh_user::sms_sender(&cli.user, cli.runs(Target::All)).context("SMS provider")?;
        let deps = chatmesh_user::UserDeps {
            db: db.clone().expect("db for user"),
            kv: kv.clone().expect("kv for user"),
            sessions: sessions.clone().expect("sessions for user"),
            files: clients.to(Service::File, Service::User)?,
            sms,
            index: index.clone().expect("index for user"),
        };
        let svc = chatmesh_user::service(&cli.user, deps);
        clients.serve_here(Service::User, svc.clone());
        grpc_routes.push((cli.user_listen, grpc_server().add_service(svc)));
    }
    if cli.runs(Target::Friend) {
        let deps = chatmesh_friend::FriendDeps {
            db: db.clone().expect("db for friend"),
            index: index.clone().expect("index for friend"),
            users: clients.to(Service::User, Service::Friend)?,
            notices: chatmesh_common::members::MembershipNotices::open(
                &cli.redis_url,
                &cli.redis_namespace,
                members.clone(),
            )?,
        };
        let svc = chatmesh_friend::service(deps);
        clients.serve_here(Service::Friend, svc.clone());
        grpc_routes.push((cli.friend_listen, grpc_server().add_service(svc)));
    }
    if cli.runs(Target::Transmit) {
        let deps = chatmesh_transmit::TransmitDeps {
            members: members.clone().expect("members for transmit"),
            queue: queue.clone().expect("queue for transmit"),
            users: clients.to(Service::User, Service::Transmit)?,
            files: clients.to(Service::File, Service::Transmit)?,
        };
        let transmit = chatmesh_transmit::service(&cli.transmit, deps);
        let svc = chatmesh_transmit::server(transmit.clone());
        clients.serve_here(Service::Transmit, svc.clone());
        clients.transmit_here = Some(transmit);
        grpc_routes.push((cli.transmit_listen, grpc_server().add_service(svc)));
    }
    if cli.runs(Target::Message) {
        let deps = chatmesh_message::MessageDeps {
            db: db.clone().expect("db for message"),
            index: index.clone().expect("index for message"),
            users: clients.to(Service::User, Service::Message)?,
            files: clients.to(Service::File, Service::Message)?,
        };
        let svc = chatmesh_message::service(deps);
        clients.serve_here(Service::Message, svc.clone());
        grpc_routes.push((cli.message_listen, grpc_server().add_service(svc)));
        let storage = Arc::new(chatmesh_message::Storage {
            db: db.clone().expect("db for message"),
            index: index.clone().expect("index for message"),
            db_link: backends.db_link.clone(),
            search_link: backends.health.link("search", false),
        });
        let queue = queue.clone().expect("queue for message");
        let stop = shutdown.clone();
        let consumer = storage.clone();
        tasks.spawn(async move {
            queue.consume(consumer, stop).await;
            Ok(())
        });
        let stop = shutdown.clone();
        tasks.spawn(async move {
            storage.catch_up(stop).await;
            Ok(())
        });
    }
    if let Some(recognizer) = backends.speech.clone() {
        let svc = chatmesh_speech::service(&cli.speech, recognizer);
        clients.serve_here(Service::Speech, svc.clone());
        grpc_routes.push((cli.speech_listen, grpc_server().add_service(svc)));
    }
    for (addr, router) in grpc_routes {
        let listener = grpc::bind(addr).await?;
        tracing::info!(%addr, "gRPC service listening");
        let mut stop = shutdown.clone();
        let tls = tls.clone();
        tasks.spawn(async move {
            let stopped = async move { chatmesh_common::stopped(&mut stop).await };
            grpc::serve(router, listener, tls, stopped).await.map_err(anyhow::Error::from)
        });
    }
    if cli.runs(Target::Gateway) {
        let upstreams = chatmesh_gateway::Upstreams {
            user: clients.to(Service::User, Service::Gateway)?,
            file: clients.to(Service::File, Service::Gateway)?,
            friend: clients.to(Service::Friend, Service::Gateway)?,
            transmit: clients.transmit_for_gateway()?,
            message: clients.to(Service::Message, Service::Gateway)?,
            speech: clients.to(Service::Speech, Service::Gateway)?,
        };
        let conns = chatmesh_gateway::push::Connections::default();
        let bus = chatmesh_gateway::bus::PushBus::open(
            conns.clone(),
            &cli.redis_url,
            &cli.redis_namespace,
            shutdown.clone(),
            &backends.health,
        )
        .await
        .context("opening the push bus")?;
        let gw = chatmesh_gateway::Gateway::new(
            cli.gateway.clone(),
            sessions.clone().expect("sessions for gateway"),
            kv.clone().expect("kv for gateway"),
            upstreams,
            conns,
            bus,
        );
        for (addr, router) in [(cli.http_listen, gw.http_router()), (cli.ws_listen, gw.ws_router())] {
            // Connection cap, idle and header timeouts, the peer address for limits.
            let listener = chatmesh_gateway::edge::GuardedListener::new(grpc::bind(addr).await?, &cli.gateway);
            tracing::info!(%addr, "gateway listening");
            let mut stop = shutdown.clone();
            let header_timeout = cli.gateway.header_read_timeout;
            tasks.spawn(async move {
                let stopped = async move { chatmesh_common::stopped(&mut stop).await };
                chatmesh_gateway::edge::serve(listener, router, header_timeout, stopped).await;
                Ok(())
            });
        }
    }
    backends.serving.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut stop = shutdown.clone();
    loop {
        tokio::select! {
            done = tasks.join_next() => match done {
                Some(done) => {
                    done.context("service task panicked")??;
                    if !*shutdown.borrow() {
                        anyhow::bail!("a service stopped unexpectedly");
                    }
                }
                None => return Ok(()),
            },
            _ = chatmesh_common::stopped(&mut stop) => break,
        }
    }
    // Stopping: listeners no longer accept; what is in flight gets the grace time, no more.
    let drain = async {
        while let Some(done) = tasks.join_next().await {
            done.context("service task panicked")??;
        }
        anyhow::Ok(())
    };
    match tokio::time::timeout(cli.shutdown_grace, drain).await {
        Ok(result) => result,
        Err(_) => {
            tracing::warn!(grace = ?cli.shutdown_grace, "work still in flight after the shutdown grace; stopping it");
            tasks.abort_all();
            Ok(())
        }
    }
}

/// Turns true `delay` after `signal` did. Meanwhile everything serves as before, but readiness
/// says "stopping": Kubernetes has already taken the pod out of its Services, and the delay
/// lets every client's next DNS refresh move it to another pod before this one goes.
fn delayed(mut signal: watch::Receiver<bool>, delay: Duration, backends: Arc<Backends>) -> watch::Receiver<bool> {
    let (stop, shutdown) = watch::channel(false);
    tokio::spawn(async move {
        chatmesh_common::stopped(&mut signal).await;
        backends.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
        if !delay.is_zero() {
            tracing::info!(?delay, "serving on while clients move to other pods");
            tokio::time::sleep(delay).await;
        }
        let _ = stop.send(true);
    });
    shutdown
}

/// Clients of the services: a direct call into the ones this process runs, connections to
/// the others.
struct Clients<'a> {
    cli: &'a Cli,
    tls: Option<&'a MeshTls>,
    here: HashMap<Service, grpc::LocalService>,
    /// Transmit, when this process runs it: the gateway calls it through its Rust interface.
    transmit_here: Option<Arc<chatmesh_transmit::service::Transmit>>,
}

impl Clients<'_> {
    /// `svc` runs in this process: later clients of it call it directly.
    fn serve_here<S>(&mut self, service: Service, svc: S)
    where
        S: GrpcServer<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
    {
        self.here.insert(service, grpc::local(svc, self.tls.is_some()));
    }

    /// The gateway's client of transmit: direct when this process runs it ([`grpc::Direct`]).
    fn transmit_for_gateway(&self) -> anyhow::Result<chatmesh_gateway::TransmitClient> {
        Ok(match &self.transmit_here {
            Some(transmit) => chatmesh_gateway::TransmitClient::Direct(grpc::Direct::new(
                transmit.clone(),
                Service::Gateway,
                self.tls.is_some(),
                self.cli.rpc_timeout,
            )),
            None => chatmesh_gateway::TransmitClient::grpc(self.to(Service::Transmit, Service::Gateway)?),
        })
    }

    /// A client of `target` for `caller`.
    fn to(&self, target: Service, caller: Service) -> anyhow::Result<GrpcChannel> {
        let cli = self.cli;
        let timeout = match target {
            // Recognition may take as long as the speech service allows, plus the transfer.
            Service::Speech => cli.rpc_timeout.max(cli.speech.speech_timeout + Duration::from_secs(5)),
            _ => cli.rpc_timeout,
        };
        if let Some(svc) = self.here.get(&target) {
            return Ok(grpc::local_channel(svc.clone(), caller, timeout));
        }
        let url = match target {
            Service::User => &cli.user_addr,
            Service::Friend => &cli.friend_addr,
            Service::File => &cli.file_addr,
            Service::Message => &cli.message_addr,
            Service::Transmit => &cli.transmit_addr,
            Service::Speech => &cli.speech_addr,
            Service::Gateway => anyhow::bail!("the gateway serves no gRPC"),
        };
        Ok(grpc::channel(url, timeout, cli.dns_refresh, self.tls)?)
    }
}

/// `/healthz` (the process runs), `/readyz` (every port listens and the required connections
/// are up), `/metrics`.
fn admin_router(backends: Arc<Backends>) -> axum::Router {
    use axum::http::StatusCode;
    use axum::routing::get;
    axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let backends = backends.clone();
                async move {
                    match backends.check().await {
                        Ok(()) => (StatusCode::OK, "ready".to_string()),
                        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e),
                    }
                }
            }),
        )
        .route("/metrics", get(|| async { chatmesh_common::telemetry::metrics().render() }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Connected is not yet ready: until every port listens, `/readyz` says the process is
    /// starting.
    #[tokio::test]
    async fn not_ready_until_every_port_listens() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = format!("--data-dir={}", dir.path().display());
        let cli = Cli::try_parse_from(["chatmesh", "--target=user", data_dir.as_str()]).unwrap();
        let backends = Backends::open(&cli).await.unwrap();
        let starting = backends.check().await.unwrap_err();
        assert!(starting.contains("starting"), "{starting}");
        backends.serving.store(true, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(backends.check().await, Ok(()));
    }

    /// Standalone, only the gateway's public ports face the network: the internal services act
    /// on the user id inside each request, so nothing but this host may reach them.
    #[test]
    fn only_the_gateway_listens_beyond_loopback_by_default() {
        let cli = Cli::try_parse_from(["chatmesh"]).unwrap();
        let internal = [
            cli.speech_listen,
            cli.file_listen,
            cli.user_listen,
            cli.transmit_listen,
            cli.message_listen,
            cli.friend_listen,
            cli.admin_listen,
        ];
        for addr in internal {
            assert!(addr.ip().is_loopback(), "{addr} is not loopback");
        }
        assert!(!cli.http_listen.ip().is_loopback() && !cli.ws_listen.ip().is_loopback());
        assert!(cli.tls_cert.is_none() && !cli.gateway.public_metrics);
    }

    #[test]
    fn tls_needs_all_three_files() {
        assert!(Cli::try_parse_from(["chatmesh", "--tls-cert=a.crt"]).is_err());
        assert!(Cli::try_parse_from(["chatmesh", "--tls-cert=a.crt", "--tls-key=a.key"]).is_err());
        assert!(Cli::try_parse_from(["chatmesh", "--tls-cert=a.crt", "--tls-key=a.key", "--tls-ca=ca.crt"]).is_ok());
    }
}
