//! Everything the transmit service can refuse, with the text the client sees.

use chatmesh_common::BackendError;
use chatmesh_common::grpc::{CallError, ServiceFailure};

#[derive(Debug, thiserror::Error)]
pub enum TransmitError {
    #[error("chat session not found")]
    UnknownSession,
    #[error("message content is missing")]
    NoContent,
    #[error("message_type {declared} does not match its content ({actual})")]
    TypeMismatch { declared: String, actual: &'static str },
    #[error("text message is empty")]
    EmptyText,
    #[error("text message is longer than {0} bytes")]
    TextTooLong(usize),
    #[error("{0} is empty")]
    EmptyAttachment(&'static str),
    #[error("file name is empty")]
    NoFileName,
    #[error("the message could not be queued; it was not sent, please retry")]
    NotQueued(#[source] BackendError),
    #[error("request carries no user id")]
    NoCaller,
    #[error("{0}")]
    Service(#[from] CallError),
    #[error("{0}")]
    Backend(#[from] BackendError),
}

impl From<sqlx::Error> for TransmitError {
    fn from(e: sqlx::Error) -> Self {
        Self::Backend(e.into())
    }
}

impl ServiceFailure for TransmitError {
    fn is_internal(&self) -> bool {
        matches!(self, Self::Backend(_) | Self::Service(CallError::Unavailable(_)) | Self::NoCaller)
    }
}
