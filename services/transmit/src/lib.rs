//! The transmit service: for each new message, checks that the sender is a member of the
//! session and that the content is what its type says, stores attachments with the file
//! service (only their ids travel on), numbers and timestamps the message, queues it durably
//! for storage, and returns it with the members it goes to. Served as `MsgTransmitService`.

pub mod error;
pub mod service;

use std::sync::Arc;

use chatmesh_common::followed::Followed;
use chatmesh_common::grpc::GrpcChannel;
use chatmesh_common::members::SessionMembers;
use chatmesh_common::queue::MessageQueue;
use chatmesh_proto::file_service_client::FileServiceClient;
use chatmesh_proto::msg_transmit_service_server::MsgTransmitServiceServer;
use chatmesh_proto::user_service_client::UserServiceClient;

pub use error::TransmitError;

#[derive(Debug, Clone, clap::Args)]
pub struct TransmitArgs {
    /// Longest text message accepted, in bytes.
    #[arg(long, env = "CHATMESH_MAX_TEXT_BYTES", default_value_t = 64 * 1024)]
    pub max_text_bytes: usize,
}

pub struct TransmitDeps {
    /// Session members (cached while their changes are heard; see `chatmesh_common::members`).
    pub members: Arc<SessionMembers>,
    pub queue: Arc<dyn MessageQueue>,
    pub users: GrpcChannel,
    pub files: GrpcChannel,
}

/// The service, to be served with [`server`] and, in the same process, called directly.
pub fn service(args: &TransmitArgs, deps: TransmitDeps) -> Arc<service::Transmit> {
    Arc::new(service::Transmit {
        members: deps.members,
        profiles: Arc::new(Followed::unfollowed(service::PROFILE_TTL, service::PROFILE_CACHE)),
        queue: deps.queue,
        users: chatmesh_common::sized!(UserServiceClient::new(deps.users)),
        files: chatmesh_common::sized!(FileServiceClient::new(deps.files)),
        max_text_bytes: args.max_text_bytes,
    })
}

/// `transmit` as a gRPC server.
pub fn server(transmit: Arc<service::Transmit>) -> MsgTransmitServiceServer<service::Transmit> {
    chatmesh_common::sized!(MsgTransmitServiceServer::from_arc(transmit))
}
