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
}

/// The gRPC service storing files under `dir`.
pub fn service(args: &FileArgs, db: Database, dir: PathBuf) -> FileServiceServer<service::Files> {
    let files = service::Files {
        store: store::FileStore::new(db, dir),
        max_file_bytes: args.max_file_bytes,
        max_files: args.max_files_per_request,
    };
    chatmesh_common::sized!(FileServiceServer::new(files))
}
