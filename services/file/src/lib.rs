//! The file service: file bytes in a directory (a volume in Kubernetes), metadata and access
//! rules in the database. Served over gRPC as the seed's `FileService`.

pub mod error;
pub mod service;
pub mod store;

use std::path::PathBuf;

use chatmesh_common::Database;
use chatmesh_proto::file_service_server::FileServiceServer;

pub use error::FileError;

#[derive(Debug, Clone, clap::Args)]
pub struct FileArgs {
    /// Largest single file accepted, in bytes.
    #[arg(long, env = "CHATMESH_MAX_FILE_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_file_bytes: usize,
    /// Most files in one multi-file request.
    #[arg(long, env = "CHATMESH_MAX_FILES_PER_REQUEST", default_value_t = 32)]
    pub max_files_per_request: usize,
    /// Most file bytes one download response carries (repeated ids count once).
    #[arg(long, env = "CHATMESH_MAX_FILE_RESPONSE_BYTES", default_value_t = 128 * 1024 * 1024)]
    pub max_file_response_bytes: usize,
    /// Bytes one user may store in all (0: no quota).
    #[arg(long, env = "CHATMESH_STORAGE_QUOTA_BYTES", default_value_t = 1024 * 1024 * 1024)]
    pub storage_quota_bytes: u64,
}

/// The gRPC service storing files under `dir`.
pub fn service(args: &FileArgs, db: Database, dir: PathBuf) -> FileServiceServer<service::Files> {
    let files = service::Files {
        store: store::FileStore::new(db, dir),
        max_file_bytes: args.max_file_bytes,
        max_files: args.max_files_per_request,
        max_response_bytes: args.max_file_response_bytes,
        quota_bytes: args.storage_quota_bytes,
        owner_locks: Default::default(),
    };
    chatmesh_common::sized!(FileServiceServer::new(files))
}
