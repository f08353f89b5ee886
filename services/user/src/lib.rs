//! The user service: accounts by nickname + password and by phone + SMS code, login sessions,
//! and profiles. Served over gRPC as the seed's `UserService`.

pub mod avatar;
pub mod codes;
pub mod error;
pub mod limits;
pub mod pool;
pub mod rules;
pub mod service;
pub mod sms;
pub mod store;

use std::sync::Arc;

use chatmesh_common::grpc::GrpcChannel;
use chatmesh_common::{Database, ExpiringStore, LoginSessions};
use chatmesh_proto::file_service_client::FileServiceClient;
use chatmesh_proto::user_service_server::UserServiceServer;

pub use error::UserError;
pub use sms::{SmsError, SmsSender};

/// How verification codes reach phones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SmsProvider {
    /// Aliyun Dysms `SendSms`.
    Aliyun,
    /// Development only: the code is written to the log.
    Log,
}

#[derive(Debug, Clone, clap::Args)]
pub struct UserArgs {
    /// SMS provider for verification codes. Unset: `log` with --target all, refused otherwise.
    #[arg(long, env = "CHATMESH_SMS_PROVIDER", value_enum)]
    pub sms_provider: Option<SmsProvider>,
    #[command(flatten)]
    pub aliyun: sms::AliyunArgs,
    /// Least time between two codes sent to one phone.
    #[arg(long, env = "CHATMESH_SMS_RESEND_INTERVAL", default_value = "60s", value_parser = humantime::parse_duration)]
    pub sms_resend_interval: std::time::Duration,
    /// Largest avatar accepted, in bytes.
    #[arg(long, env = "CHATMESH_MAX_AVATAR_BYTES", default_value_t = 2 * 1024 * 1024)]
    pub max_avatar_bytes: usize,
    /// Largest side of the avatar thumbnail every profile carries, in pixels.
    #[arg(long, env = "CHATMESH_AVATAR_THUMB_PX", default_value_t = 128)]
    pub avatar_thumb_px: u32,
    /// Largest avatar thumbnail, in bytes.
    #[arg(long, env = "CHATMESH_AVATAR_THUMB_BYTES", default_value_t = 32 * 1024)]
    pub avatar_thumb_bytes: usize,
    #[command(flatten)]
    pub limits: limits::LimitArgs,
    #[command(flatten)]
    pub pool: pool::PoolArgs,
}

/// Everything the user service runs on.
pub struct UserDeps {
    pub db: Database,
    pub kv: Arc<dyn ExpiringStore>,
    pub sessions: LoginSessions,
    pub files: GrpcChannel,
    pub sms: Arc<dyn SmsSender>,
    pub index: Arc<dyn chatmesh_common::search::SearchIndex>,
}

/// The gRPC service, ready to add to a tonic router.
pub fn service(args: &UserArgs, deps: UserDeps) -> UserServiceServer<service::Users> {
    let users = service::Users {
        store: store::UserStore::new(deps.db),
        sessions: deps.sessions,
        codes: codes::VerifyCodes::new(deps.kv.clone(), deps.sms, args.sms_resend_interval),
        limits: limits::Limits::new(deps.kv, args.limits.clone()),
        heavy: pool::HeavyPool::new(&args.pool),
        files: chatmesh_common::sized!(FileServiceClient::new(deps.files)),
        index: deps.index,
        max_avatar_bytes: args.max_avatar_bytes,
        avatar_thumb_px: args.avatar_thumb_px,
        avatar_thumb_bytes: args.avatar_thumb_bytes,
    };
    chatmesh_common::sized!(UserServiceServer::new(users))
}

/// The SMS sender the configuration names; `standalone` allows the development default.
pub fn sms_sender(args: &UserArgs, standalone: bool) -> Result<Arc<dyn SmsSender>, SmsError> {
    match args.sms_provider {
        Some(SmsProvider::Aliyun) => Ok(Arc::new(sms::AliyunSms::new(args.aliyun.config()?)?)),
        Some(SmsProvider::Log) => Ok(Arc::new(sms::LogSms)),
        None if standalone => Ok(Arc::new(sms::LogSms)),
        None => Err(SmsError::Config("set --sms-provider (aliyun, or log for development)".into())),
    }
}
