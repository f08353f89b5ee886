//! `FileService`: single and multi upload and download, each read checked against the caller.

use std::collections::HashMap;

use chatmesh_common::grpc::reply;
use chatmesh_proto::file_service_server::FileService;
use chatmesh_proto::*;
use tonic::{Request, Response, Status};

use crate::error::FileError;
use crate::store::{FileRow, FileStore};

pub struct Files {
    pub store: FileStore,
    pub max_file_bytes: usize,
    pub max_files: usize,
    pub max_response_bytes: usize,
    /// Bytes one owner may store in all; 0 for none.
    pub quota_bytes: u64,
    pub owner_locks: OwnerLocks,
}

/// Serialises one owner's quota check and store, so concurrent uploads cannot overshoot the
/// quota between the check and the insert. Per process: a files volume has one file service
/// unless it is ReadWriteMany (`operator/README.md`). Striped, so memory stays fixed.
pub struct OwnerLocks([tokio::sync::Mutex<()>; 64]);

impl Default for OwnerLocks {
    fn default() -> Self {
        Self(std::array::from_fn(|_| tokio::sync::Mutex::new(())))
    }
}

impl OwnerLocks {
    async fn lock(&self, owner: &str) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let stripe = BuildHasherDefault::<DefaultHasher>::default().hash_one(owner) as usize % self.0.len();
        self.0[stripe].lock().await
    }
}

type Rpc<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl FileService for Files {
    async fn get_single_file(&self, req: Request<GetSingleFileReq>) -> Rpc<GetSingleFileRsp> {
        let req = req.into_inner();
        let result = async {
            let mut files = self.read(caller(&req)?, std::slice::from_ref(&req.file_id)).await?;
            Ok::<_, FileError>(GetSingleFileRsp { file_data: files.pop(), ..Default::default() })
        };
        reply(req.request_id.clone(), result.await)
    }

    async fn get_multi_file(&self, req: Request<GetMultiFileReq>) -> Rpc<GetMultiFileRsp> {
        let req = req.into_inner();
        let result = async {
            if req.file_id_list.len() > self.max_files {
                return Err(FileError::TooMany(self.max_files));
            }
            // Each file once, however often it is named.
            let mut ids = req.file_id_list.clone();
            ids.sort();
            ids.dedup();
            let files = self.read(caller(&req)?, &ids).await?;
            let file_data = files.into_iter().map(|f| (f.file_id.clone(), f)).collect();
            Ok(GetMultiFileRsp { file_data, ..Default::default() })
        };
        reply(req.request_id.clone(), result.await)
    }

    async fn put_single_file(&self, req: Request<PutSingleFileReq>) -> Rpc<PutSingleFileRsp> {
        grant_access(&req)?;
        let req = req.into_inner();
        let result = async {
            let data = req.file_data.as_ref().ok_or(FileError::NoData)?;
            let mut infos = self.write(caller(&req)?, req.access.as_ref(), std::slice::from_ref(data)).await?;
            Ok::<_, FileError>(PutSingleFileRsp { file_info: infos.pop(), ..Default::default() })
        };
        reply(req.request_id.clone(), result.await)
    }

    async fn put_multi_file(&self, req: Request<PutMultiFileReq>) -> Rpc<PutMultiFileRsp> {
        grant_access(&req)?;
        let req = req.into_inner();
        let result = async {
            if req.file_data.is_empty() {
                return Err(FileError::NoData);
            }
            if req.file_data.len() > self.max_files {
                return Err(FileError::TooMany(self.max_files));
            }
            let file_info = self.write(caller(&req)?, req.access.as_ref(), &req.file_data).await?;
            Ok(PutMultiFileRsp { file_info, ..Default::default() })
        };
        reply(req.request_id.clone(), result.await)
    }

    async fn delete_files(&self, req: Request<DeleteFilesReq>) -> Rpc<DeleteFilesRsp> {
        let req = req.into_inner();
        let result = async {
            let owner = caller(&req)?;
            if req.file_id_list.len() > self.max_files {
                return Err(FileError::TooMany(self.max_files));
            }
            // Only the owner's own files go; others' look like missing ones and stay.
            for row in self.store.meta(&req.file_id_list).await? {
                if row.owner_id == owner {
                    self.store.remove(&row.file_id).await?;
                }
            }
            Ok(DeleteFilesRsp::default())
        };
        reply(req.request_id.clone(), result.await)
    }
}

/// Files readable beyond their owner are stored only for the services whose work that is: chat
/// attachments for transmit, public avatars for the user service (the gateway clears the field).
fn grant_access<T: HasAccess>(req: &Request<T>) -> Result<(), tonic::Status> {
    use chatmesh_common::mesh::{authz, peer};
    let Some(access) = req.get_ref().access() else { return Ok(()) };
    if access.chat_session_id.is_some() {
        authz::may_grant(peer(req), authz::Grant::ChatAttachment)?;
    }
    if access.public_read {
        authz::may_grant(peer(req), authz::Grant::PublicFile)?;
    }
    Ok(())
}

trait HasAccess {
    fn access(&self) -> Option<&FileAccess>;
}

impl HasAccess for PutSingleFileReq {
    fn access(&self) -> Option<&FileAccess> {
        self.access.as_ref()
    }
}

impl HasAccess for PutMultiFileReq {
    fn access(&self) -> Option<&FileAccess> {
        self.access.as_ref()
    }
}

fn caller(req: &impl Envelope) -> Result<&str, FileError> {
    req.caller().ok_or(FileError::NoCaller)
}

impl Files {
    /// Validates every file before storing any; stores all or none.
    async fn write(
        &self,
        owner: &str,
        access: Option<&FileAccess>,
        files: &[FileUploadData],
    ) -> Result<Vec<FileMessageInfo>, FileError> {
        for f in files {
            self.check(f)?;
        }
        // Held until the files are stored: the check and the insert are one step per owner.
        let _owner = if self.quota_bytes > 0 { Some(self.owner_locks.lock(owner).await) } else { None };
        if self.quota_bytes > 0 {
            let adding: u64 = files.iter().map(|f| f.file_content.len() as u64).sum();
            if self.store.bytes_of(owner).await?.saturating_add(adding) > self.quota_bytes {
                return Err(FileError::Quota(self.quota_bytes));
            }
        }
        let mut stored: Vec<FileMessageInfo> = Vec::with_capacity(files.len());
        for f in files {
            let row = FileRow {
                file_id: chatmesh_common::new_id(),
                file_name: f.file_name.clone(),
                file_size: f.file_content.len() as i64,
                owner_id: owner.to_string(),
                chat_session_id: access.and_then(|a| a.chat_session_id.clone()),
                public_read: access.is_some_and(|a| a.public_read) as i64,
            };
            if let Err(e) = self.store.put(&row, &f.file_content).await {
                for done in &stored {
                    self.store.remove(done.file_id()).await?;
                }
                return Err(e);
            }
            stored.push(FileMessageInfo {
                file_id: Some(row.file_id),
                file_size: row.file_size,
                file_name: row.file_name,
                file_contents: None,
            });
        }
        Ok(stored)
    }

    fn check(&self, f: &FileUploadData) -> Result<(), FileError> {
        if f.file_name.trim().is_empty() {
            return Err(FileError::EmptyName);
        }
        if f.file_name.len() > 255 {
            return Err(FileError::NameTooLong);
        }
        if f.file_content.len() > self.max_file_bytes {
            return Err(FileError::TooLarge { name: f.file_name.clone(), limit: self.max_file_bytes });
        }
        // 0 means "not stated" (the seed's own clients fill it, others may not).
        if f.file_size != 0 && f.file_size != f.file_content.len() as i64 {
            return Err(FileError::SizeMismatch {
                name: f.file_name.clone(),
                declared: f.file_size,
                actual: f.file_content.len(),
            });
        }
        Ok(())
    }

    /// The files, in request order, if `caller` may read every one of them. A file the caller
    /// may not read is reported exactly like a missing one, so ids cannot be probed.
    async fn read(&self, caller: &str, ids: &[String]) -> Result<Vec<FileDownloadData>, FileError> {
        if ids.is_empty() {
            return Err(FileError::NoData);
        }
        let rows: HashMap<String, FileRow> =
            self.store.meta(ids).await?.into_iter().map(|r| (r.file_id.clone(), r)).collect();
        let mut total = 0usize;
        for id in ids {
            let row = rows.get(id).ok_or_else(|| FileError::NotFound(id.clone()))?;
            if !self.may_read(caller, row).await? {
                return Err(FileError::NotFound(id.clone()));
            }
            // Sizes from the metadata: nothing is read from disk for a response too large.
            total = total.saturating_add(row.file_size.max(0) as usize);
            if total > self.max_response_bytes {
                return Err(FileError::ResponseTooLarge(self.max_response_bytes));
            }
        }
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.push(FileDownloadData { file_id: id.clone(), file_content: self.store.read(id).await? });
        }
        Ok(out)
    }

    async fn may_read(&self, caller: &str, row: &FileRow) -> Result<bool, FileError> {
        if row.owner_id == caller || row.public_read != 0 {
            return Ok(true);
        }
        match &row.chat_session_id {
            Some(session) => self.store.is_member(session, caller).await,
            None => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn files() -> (Files, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let db = chatmesh_common::Database::connect(&format!("sqlite://{}/f.db?mode=rwc", dir.path().display()), 2)
            .await
            .unwrap();
        db.migrate().await.unwrap();
        let store = FileStore::new(db, dir.path().join("files"));
        let files = Files {
            store,
            max_file_bytes: 1000,
            max_files: 4,
            max_response_bytes: 8,
            quota_bytes: 12,
            owner_locks: OwnerLocks::default(),
        };
        (files, dir)
    }

    fn data(name: &str) -> FileUploadData {
        FileUploadData { file_name: name.into(), file_size: 3, file_content: b"abc".to_vec() }
    }

    #[tokio::test]
    async fn public_files_are_readable_by_anyone_logged_in_private_ones_by_their_owner() {
        let (files, _dir) = files().await;
        let public = FileAccess { chat_session_id: None, public_read: true };
        let avatar = files.write("alice", Some(&public), &[data("avatar")]).await.unwrap().remove(0);
        let private = files.write("alice", None, &[data("doc")]).await.unwrap().remove(0);
        let read = |who: &'static str, id: String| {
            let files = &files;
            async move { files.read(who, &[id]).await }
        };
        assert_eq!(read("bob", avatar.file_id().into()).await.unwrap()[0].file_content, b"abc");
        assert!(matches!(read("bob", private.file_id().into()).await, Err(FileError::NotFound(_))));
        assert_eq!(read("alice", private.file_id().into()).await.unwrap()[0].file_content, b"abc");
        let (a, p) = (avatar.file_id().to_string(), private.file_id().to_string());
        assert!(matches!(files.read("alice", &[a.clone(), p, a]).await, Err(FileError::ResponseTooLarge(8))));
    }

    #[tokio::test]
    async fn uploads_stop_at_the_quota() {
        let (files, _dir) = files().await;
        for _ in 0..4 {
            files.write("alice", None, &[data("doc")]).await.unwrap();
        }
        assert!(matches!(files.write("alice", None, &[data("doc")]).await, Err(FileError::Quota(12))));
        files.write("bob", None, &[data("doc")]).await.unwrap();
    }

    /// Twenty concurrent uploads against a quota of four: exactly four are stored.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_uploads_cannot_overshoot_the_quota() {
        let (files, _dir) = files().await;
        let files = std::sync::Arc::new(files);
        let uploads: Vec<_> = (0..20)
            .map(|_| {
                let files = files.clone();
                tokio::spawn(async move { files.write("carol", None, &[data("doc")]).await })
            })
            .collect();
        let mut stored = 0;
        for upload in uploads {
            match upload.await.unwrap() {
                Ok(_) => stored += 1,
                Err(e) => assert!(matches!(e, FileError::Quota(12)), "{e}"),
            }
        }
        assert_eq!(stored, 4);
        assert_eq!(files.store.bytes_of("carol").await.unwrap(), 12);
    }
}
