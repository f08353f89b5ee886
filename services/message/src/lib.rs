//! The message-storage service: consumes the queue the transmit service fills, stores each
//! message once (idempotent by id, acknowledged only after commit) and indexes its text; serves
//! recent-N and time-range history and keyword search to session members. Served as
//! `MsgStorageService`.

pub mod error;
pub mod service;
pub mod storage;

use std::sync::Arc;

use chatmesh_common::Database;
use chatmesh_common::grpc::GrpcChannel;
use chatmesh_common::search::SearchIndex;
use chatmesh_proto::file_service_client::FileServiceClient;
use chatmesh_proto::msg_storage_service_server::MsgStorageServiceServer;
use chatmesh_proto::user_service_client::UserServiceClient;

pub use error::MessageError;
pub use storage::Storage;

pub struct MessageDeps {
    pub db: Database,
    pub index: Arc<dyn SearchIndex>,
    pub users: GrpcChannel,
    pub files: GrpcChannel,
}

pub fn service(deps: MessageDeps) -> MsgStorageServiceServer<service::History> {
    let history = service::History {
        db: deps.db,
        index: deps.index,
        users: chatmesh_common::sized!(UserServiceClient::new(deps.users)),
        files: chatmesh_common::sized!(FileServiceClient::new(deps.files)),
    };
    chatmesh_common::sized!(MsgStorageServiceServer::new(history))
}
