//! The gateway: the seed's HTTP routes (`POST /service/...`, protobuf or proto3-JSON bodies),
//! login-session resolution, and the WebSocket that carries pushed notifications.

pub mod body;
pub mod bus;
pub mod codec;
pub mod edge;
pub mod notify;
pub mod push;
pub mod routes;
pub mod websocket;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use chatmesh_common::grpc::{Direct, GrpcChannel};
use chatmesh_common::{ExpiringStore, LoginSessions};
use chatmesh_proto::file_service_client::FileServiceClient;
use chatmesh_proto::friend_service_client::FriendServiceClient;
use chatmesh_proto::msg_storage_service_client::MsgStorageServiceClient;
use chatmesh_proto::msg_transmit_service_client::MsgTransmitServiceClient;
use chatmesh_proto::msg_transmit_service_server::MsgTransmitService;
use chatmesh_proto::speech_service_client::SpeechServiceClient;
use chatmesh_proto::user_service_client::UserServiceClient;
use chatmesh_proto::{GetTransmitTargetRsp, NewMessageReq};

#[derive(Debug, Clone, clap::Args)]
pub struct GatewayArgs {
    /// Largest HTTP request body accepted on the routes that carry files (file upload, new
    /// message, speech), in bytes.
    #[arg(long, env = "CHATMESH_MAX_BODY_BYTES", default_value_t = 80 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Largest body of `set_avatar`, in bytes.
    #[arg(long, env = "CHATMESH_MAX_AVATAR_BODY_BYTES", default_value_t = 3 * 1024 * 1024)]
    pub max_avatar_body_bytes: usize,
    /// Largest body of every other route (logins, profiles, friends, sessions, history).
    #[arg(long, env = "CHATMESH_MAX_SMALL_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_small_body_bytes: usize,
    /// How long a request body may take to arrive once its handler reads it.
    #[arg(long, env = "CHATMESH_BODY_READ_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub body_read_timeout: Duration,
    /// How long a request's headers may take to arrive; closes connections that dribble them
    /// (slowloris).
    #[arg(long, env = "CHATMESH_HEADER_READ_TIMEOUT", default_value = "15s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,
    /// A connection on which nothing moved this long is closed (longer than the ping interval
    /// and than the slowest request's processing, e.g. --speech-timeout).
    #[arg(long, env = "CHATMESH_IDLE_TIMEOUT", default_value = "120s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,
    /// Most open connections per gateway port; more wait in the kernel's backlog.
    #[arg(long, env = "CHATMESH_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// The header a trusted reverse proxy puts the client's address in (e.g. X-Forwarded-For;
    /// its last entry counts). Unset: the TCP peer is the client, and no header is believed.
    #[arg(long, env = "CHATMESH_TRUSTED_PROXY_HEADER")]
    pub trusted_proxy_header: Option<String>,
    /// Bytes of pushes waiting for one WebSocket; a socket that falls further behind is closed
    /// (code 4008) and its client reloads from history.
    #[arg(long, env = "CHATMESH_WS_QUEUE_BYTES", default_value_t = 1024 * 1024)]
    pub ws_queue_bytes: usize,
    /// How long one WebSocket send may take before the socket counts as stuck and is closed.
    #[arg(long, env = "CHATMESH_WS_SEND_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub ws_send_timeout: Duration,
    /// WebSockets one user may hold on one gateway; a new one closes the oldest (code 4009).
    #[arg(long, env = "CHATMESH_WS_MAX_DEVICES", default_value_t = 8)]
    pub ws_max_devices: usize,
    /// How often the server pings each WebSocket; two missed pongs close it.
    #[arg(long, env = "CHATMESH_WS_PING_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub ws_ping_interval: Duration,
    /// How long a new WebSocket may take to send its `ClientAuthenticationReq`.
    #[arg(long, env = "CHATMESH_WS_AUTH_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub ws_auth_timeout: Duration,
    /// Also serve `/readyz` and `/metrics` on the public HTTP port (they are always on the admin port).
    #[arg(long, env = "CHATMESH_PUBLIC_METRICS", default_value_t = false, action = clap::ArgAction::Set)]
    pub public_metrics: bool,
    /// A directory served at `/` on the HTTP port (the built web client, `web/dist`); API
    /// routes and `/ws` take precedence. Unset: nothing is served there.
    #[arg(long, env = "CHATMESH_WEB_DIR", value_parser = web_dir)]
    pub web_dir: Option<std::path::PathBuf>,
}

/// A web directory must hold the client's `index.html`: a wrong path fails at start-up
/// rather than serving 404s.
fn web_dir(path: &str) -> Result<std::path::PathBuf, String> {
    let dir = std::path::PathBuf::from(path);
    if dir.join("index.html").is_file() {
        Ok(dir)
    } else {
        Err(format!("no index.html in {path} (build the client: npm ci && npm run build in web/)"))
    }
}

/// Channels to the services behind the gateway.
pub struct Upstreams {
    pub user: GrpcChannel,
    pub file: GrpcChannel,
    pub friend: GrpcChannel,
    pub transmit: TransmitClient,
    pub message: GrpcChannel,
    pub speech: GrpcChannel,
}

/// The transmit service, which every message goes through: over gRPC, or, when this process
/// runs it, through its Rust interface ([`Direct`]).
pub enum TransmitClient {
    Grpc(MsgTransmitServiceClient<GrpcChannel>),
    Direct(Direct<dyn MsgTransmitService>),
}

impl TransmitClient {
    pub fn grpc(channel: GrpcChannel) -> Self {
        Self::Grpc(chatmesh_common::sized!(MsgTransmitServiceClient::new(channel)))
    }

    pub async fn get_transmit_target(
        &self,
        req: NewMessageReq,
    ) -> Result<tonic::Response<GetTransmitTargetRsp>, tonic::Status> {
        match self {
            Self::Grpc(client) => client.clone().get_transmit_target(req).await,
            Self::Direct(direct) => {
                let rpc = "/bite_im.MsgTransmitService/GetTransmitTarget";
                direct.call(rpc, req, |transmit, req| transmit.get_transmit_target(req)).await
            }
        }
    }
}

/// Shared by every handler; a clone (one per request, as axum's state) is one pointer.
#[derive(Clone)]
pub struct Gateway(Arc<Shared>);

impl std::ops::Deref for Gateway {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What the handlers share.
pub struct Shared {
    /// Shared: every idle WebSocket holds it, and a pointer costs it 8 bytes, not the whole set.
    pub sessions: Arc<LoginSessions>,
    pub kv: Arc<dyn ExpiringStore>,
    pub user: UserServiceClient<GrpcChannel>,
    pub file: FileServiceClient<GrpcChannel>,
    pub friend: FriendServiceClient<GrpcChannel>,
    pub transmit: TransmitClient,
    pub message: MsgStorageServiceClient<GrpcChannel>,
    pub speech: SpeechServiceClient<GrpcChannel>,
    /// This instance's WebSocket connections.
    pub push: push::Connections,
    /// The way to every instance's connections.
    pub bus: bus::PushBus,
    pub args: Arc<GatewayArgs>,
}

impl Gateway {
    pub fn new(
        args: GatewayArgs,
        sessions: LoginSessions,
        kv: Arc<dyn ExpiringStore>,
        up: Upstreams,
        push: push::Connections,
        bus: bus::PushBus,
    ) -> Self {
        push.configure(args.ws_queue_bytes, args.ws_max_devices);
        Self(Arc::new(Shared {
            sessions: Arc::new(sessions),
            kv,
            user: chatmesh_common::sized!(UserServiceClient::new(up.user)),
            file: chatmesh_common::sized!(FileServiceClient::new(up.file)),
            friend: chatmesh_common::sized!(FriendServiceClient::new(up.friend)),
            transmit: up.transmit,
            message: chatmesh_common::sized!(MsgStorageServiceClient::new(up.message)),
            speech: chatmesh_common::sized!(SpeechServiceClient::new(up.speech)),
            push,
            bus,
            args: Arc::new(args),
        }))
    }

    /// The HTTP port: the seed's routes, `/ws`, health and metrics.
    pub fn http_router(&self) -> Router {
        routes::router(self.clone())
    }

    /// The seed's WebSocket port (9001): an upgrade on any path.
    pub fn ws_router(&self) -> Router {
        websocket::router(self.clone())
    }
}
