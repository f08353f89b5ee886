//! The friend service: friendships and their applications, user search, and chat sessions
//! (one-to-one sessions made on acceptance, groups made by users) with their members.
//! Served over gRPC as the seed's `FriendService`.

pub mod error;
pub mod service;
pub mod store;

use std::sync::Arc;

use chatmesh_common::Database;
use chatmesh_common::grpc::GrpcChannel;
use chatmesh_common::search::SearchIndex;
use chatmesh_proto::friend_service_server::FriendServiceServer;
use chatmesh_proto::user_service_client::UserServiceClient;

pub use error::FriendError;

pub struct FriendDeps {
    pub db: Database,
    pub index: Arc<dyn SearchIndex>,
    pub users: GrpcChannel,
    pub notices: chatmesh_common::members::MembershipNotices,
}

pub fn service(deps: FriendDeps) -> FriendServiceServer<service::Friends> {
    let friends = service::Friends {
        store: store::FriendStore::new(deps.db),
        notices: deps.notices,
        index: deps.index,
        users: chatmesh_common::sized!(UserServiceClient::new(deps.users)),
    };
    chatmesh_common::sized!(FriendServiceServer::new(friends))
}
