//! `MsgStorageService`: recent-N and time-range history and keyword search, for members only,
//! filled with sender profiles and attachment bytes as the seed does.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chatmesh_common::Database;
use chatmesh_common::grpc::{GrpcChannel, expect_success, reply};
use chatmesh_common::messages::{self, MessageRow};
use chatmesh_common::search::SearchIndex;
use chatmesh_proto::file_service_client::FileServiceClient;
use chatmesh_proto::message_content::MsgContent;
use chatmesh_proto::msg_storage_service_server::MsgStorageService;
use chatmesh_proto::user_service_client::UserServiceClient;
use chatmesh_proto::*;
use tonic::{Request, Response, Status};

use crate::error::MessageError;

/// Most messages one history, recent or search call returns.
pub const MAX_MESSAGES: i64 = 1000;
/// Most files one internal lookup asks the file service for (its per-request limit).
const FILE_LOOKUP_CHUNK: usize = 32;
/// Attachment bytes inlined in one response at most (internal messages stop at 256 MiB).
const MAX_ATTACHMENT_BYTES: usize = 96 * 1024 * 1024;

pub struct History {
    pub db: Database,
    pub index: Arc<dyn SearchIndex>,
    pub users: UserServiceClient<GrpcChannel>,
    pub files: FileServiceClient<GrpcChannel>,
}

type Rpc<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl MsgStorageService for History {
    async fn get_history_msg(&self, req: Request<GetHistoryMsgReq>) -> Rpc<GetHistoryMsgRsp> {
        let req = req.into_inner();
        let result = async {
            let me = self.member(&req, &req.chat_session_id).await?;
            if req.start_time > req.over_time {
                return Err(MessageError::BadRange);
            }
            let rows =
                messages::between(&self.db, &req.chat_session_id, req.start_time, req.over_time, MAX_MESSAGES).await?;
            Ok(GetHistoryMsgRsp { msg_list: self.fill(&me, rows).await?, ..Default::default() })
        };
        reply(req.request_id.clone(), result.await)
    }

    async fn get_recent_msg(&self, req: Request<GetRecentMsgReq>) -> Rpc<GetRecentMsgRsp> {
        let req = req.into_inner();
        let result = async {
            let me = self.member(&req, &req.chat_session_id).await?;
            if !(1..=MAX_MESSAGES).contains(&req.msg_count) {
                return Err(MessageError::BadCount(MAX_MESSAGES));
            }
            let before = req.cur_time.unwrap_or(i64::MAX);
            let rows = messages::recent(&self.db, &req.chat_session_id, req.msg_count, before).await?;
            Ok(GetRecentMsgRsp { msg_list: self.fill(&me, rows).await?, ..Default::default() })
        };
        reply(req.request_id.clone(), result.await)
    }

    async fn msg_search(&self, req: Request<MsgSearchReq>) -> Rpc<MsgSearchRsp> {
        let req = req.into_inner();
        let result = async {
            let me = self.member(&req, &req.chat_session_id).await?;
            let key = req.search_key.trim();
            if key.is_empty() {
                return Err(MessageError::EmptySearch);
            }
            let ids = self.index.search_messages(&req.chat_session_id, key, MAX_MESSAGES as usize).await?;
            let mut rows = messages::by_ids(&self.db, &ids).await?;
            // The index names messages; only those of this session count (defence in depth).
            rows.retain(|r| r.chat_session_id == req.chat_session_id);
            rows.sort_by(|a, b| (a.created_at, &a.message_id).cmp(&(b.created_at, &b.message_id)));
            Ok(MsgSearchRsp { msg_list: self.fill(&me, rows).await?, ..Default::default() })
        };
        reply(req.request_id.clone(), result.await)
    }
}

impl History {
    /// The caller, if a member of the session; unknown and not-yours look the same.
    async fn member(&self, req: &impl Envelope, session: &str) -> Result<String, MessageError> {
        let me = req.caller().map(str::to_string).ok_or(MessageError::NoCaller)?;
        if chatmesh_common::db::is_member(&self.db, session, &me).await? {
            Ok(me)
        } else {
            Err(MessageError::UnknownSession)
        }
    }

    /// Wire messages with sender profiles and attachment bytes, in the rows' order.
    async fn fill(&self, reader: &str, rows: Vec<MessageRow>) -> Result<Vec<MessageInfo>, MessageError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let senders: Vec<String> = rows.iter().map(|r| r.user_id.clone()).collect::<HashSet<_>>().into_iter().collect();
        let req = GetMultiUserInfoReq { request_id: chatmesh_common::new_id(), users_id: senders };
        let profiles = expect_success(self.users.clone().get_multi_user_info(req).await)?.users_info;
        // Each attachment once, in chunks the file service accepts, until the response budget
        // is spent; later attachments keep their file id for the client to fetch.
        let mut file_ids: Vec<String> = Vec::new();
        for id in rows.iter().filter_map(|r| r.file_id.clone()) {
            if !file_ids.contains(&id) {
                file_ids.push(id);
            }
        }
        let mut bytes: HashMap<String, Vec<u8>> = HashMap::new();
        let mut spent = 0usize;
        for chunk in file_ids.chunks(FILE_LOOKUP_CHUNK) {
            if spent >= MAX_ATTACHMENT_BYTES {
                break;
            }
            let req = GetMultiFileReq {
                request_id: chatmesh_common::new_id(),
                user_id: Some(reader.to_string()),
                file_id_list: chunk.to_vec(),
                ..Default::default()
            };
            let files = expect_success(self.files.clone().get_multi_file(req).await)?;
            for (id, f) in files.file_data {
                spent += f.file_content.len();
                bytes.insert(id, f.file_content);
            }
        }
        Ok(rows
            .iter()
            .map(|row| {
                let sender = profiles
                    .get(&row.user_id)
                    .cloned()
                    .unwrap_or_else(|| UserInfo { user_id: row.user_id.clone(), ..Default::default() });
                let mut info = row.to_info(sender);
                let data = row.file_id.as_ref().and_then(|id| bytes.get(id)).cloned();
                match info.message.as_mut().and_then(|m| m.msg_content.as_mut()) {
                    Some(MsgContent::ImageMessage(i)) => i.image_content = data,
                    Some(MsgContent::FileMessage(f)) => f.file_contents = data,
                    Some(MsgContent::SpeechMessage(s)) => s.file_contents = data,
                    _ => {}
                }
                info
            })
            .collect())
    }
}
