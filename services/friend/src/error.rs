//! Everything the friend service can refuse, with the text the client sees.

use chatmesh_common::BackendError;
use chatmesh_common::grpc::{CallError, ServiceFailure};

#[derive(Debug, thiserror::Error)]
pub enum FriendError {
    #[error("you cannot add yourself as a friend")]
    SelfApply,
    #[error("you are already friends")]
    AlreadyFriends,
    #[error("you have already applied to this user")]
    AlreadyApplied,
    #[error("unknown user {0}")]
    UnknownUser(String),
    #[error("no such friend application")]
    NoSuchApplication,
    #[error("you are not friends with this user")]
    NotFriends,
    #[error("chat session not found")]
    UnknownSession,
    #[error("a group chat needs at least two members")]
    GroupTooSmall,
    #[error("a group chat may have at most {0} members")]
    GroupTooLarge(usize),
    #[error("only your friends can be put in a group: {0} is not your friend")]
    NotAFriend(String),
    #[error("the member list must include its creator")]
    GroupWithoutCreator,
    #[error("chat session name must be 1 to 64 characters")]
    BadSessionName,
    #[error("search key is empty")]
    EmptySearch,
    #[error("request carries no user id")]
    NoCaller,
    #[error("user service: {0}")]
    Users(#[from] CallError),
    #[error("{0}")]
    Backend(#[from] BackendError),
}

impl From<sqlx::Error> for FriendError {
    fn from(e: sqlx::Error) -> Self {
        Self::Backend(e.into())
    }
}

impl ServiceFailure for FriendError {
    fn is_internal(&self) -> bool {
        matches!(self, Self::Backend(_) | Self::Users(CallError::Unavailable(_)) | Self::NoCaller)
    }
}
