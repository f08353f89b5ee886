//! Everything the message-storage service can refuse, with the text the client sees.

use chatmesh_common::BackendError;
use chatmesh_common::grpc::{CallError, ServiceFailure};

#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("chat session not found")]
    UnknownSession,
    #[error("msg_count must be 1 to {0}")]
    BadCount(i64),
    #[error("start_time is after over_time")]
    BadRange,
    #[error("search key is empty")]
    EmptySearch,
    #[error("request carries no user id")]
    NoCaller,
    #[error("{0}")]
    Service(#[from] CallError),
    #[error("{0}")]
    Backend(#[from] BackendError),
}

impl ServiceFailure for MessageError {
    fn is_internal(&self) -> bool {
        matches!(self, Self::Backend(_) | Self::Service(CallError::Unavailable(_)) | Self::NoCaller)
    }
}
