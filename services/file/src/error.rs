//! Everything the file service can refuse, with the text the client sees.

use chatmesh_common::BackendError;
use chatmesh_common::grpc::ServiceFailure;

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("file name is empty")]
    EmptyName,
    #[error("file name is longer than 255 bytes")]
    NameTooLong,
    #[error("file {name:?} is larger than {limit} bytes")]
    TooLarge { name: String, limit: usize },
    #[error("file {name:?}: file_size {declared} does not match the {actual} bytes sent")]
    SizeMismatch { name: String, declared: i64, actual: usize },
    #[error("no file data in the request")]
    NoData,
    #[error("more than {0} files in one request")]
    TooMany(usize),
    #[error("the files asked for total more than {0} bytes; ask for fewer at a time")]
    ResponseTooLarge(usize),
    #[error("storage quota of {0} bytes is used up; delete something first")]
    Quota(u64),
    #[error("file {0} not found")]
    NotFound(String),
    #[error("request carries no user id")]
    NoCaller,
    #[error("file storage: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Backend(#[from] BackendError),
}

impl From<sqlx::Error> for FileError {
    fn from(e: sqlx::Error) -> Self {
        Self::Backend(e.into())
    }
}

impl ServiceFailure for FileError {
    fn is_internal(&self) -> bool {
        matches!(self, Self::Io(_) | Self::Backend(_) | Self::NoCaller)
    }
}
