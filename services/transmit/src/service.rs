//! `MsgTransmitService.GetTransmitTarget`: validate, store attachments, number, queue, and
//! name the recipients. Success is reported only after the queue confirmed the message.

use chatmesh_common::followed::{Cached, Followed};
use chatmesh_common::grpc::{GrpcChannel, expect_success, reply};
use chatmesh_common::members::SessionMembers;
use chatmesh_common::queue::MessageQueue;
use chatmesh_common::telemetry::Hop;
use chatmesh_proto::file_service_client::FileServiceClient;
use chatmesh_proto::message_content::MsgContent;
use chatmesh_proto::msg_transmit_service_server::MsgTransmitService;
use chatmesh_proto::user_service_client::UserServiceClient;
use chatmesh_proto::*;
use prost::Message;
use std::sync::Arc;
use std::time::Instant;
use tonic::{Request, Response, Status};

use crate::error::TransmitError;

/// How long a sender's profile is reused: one lookup per sender per window instead of one per
/// message (a renamed user shows the old name on messages sent within it).
pub(crate) const PROFILE_TTL: std::time::Duration = std::time::Duration::from_secs(5);
/// Profiles carry avatar thumbnails (up to 32 KiB): this many at most.
pub(crate) const PROFILE_CACHE: usize = 1024;

pub struct Transmit {
    pub members: Arc<SessionMembers>,
    pub profiles: Arc<Followed<UserInfo>>,
    pub queue: Arc<dyn MessageQueue>,
    pub users: UserServiceClient<GrpcChannel>,
    pub files: FileServiceClient<GrpcChannel>,
    pub max_text_bytes: usize,
}

#[tonic::async_trait]
impl MsgTransmitService for Transmit {
    async fn get_transmit_target(&self, req: Request<NewMessageReq>) -> Result<Response<GetTransmitTargetRsp>, Status> {
        let req = req.into_inner();
        reply(req.request_id.clone(), self.transmit(req).await)
    }
}

/// The attachment of a message: what to call it in the file service, and its bytes.
fn attachment(content: &MsgContent) -> Option<(&str, &[u8])> {
    match content {
        MsgContent::StringMessage(_) => None,
        MsgContent::ImageMessage(i) => Some(("image", i.image_content.as_deref().unwrap_or_default())),
        MsgContent::FileMessage(f) => Some((&f.file_name, f.file_contents.as_deref().unwrap_or_default())),
        MsgContent::SpeechMessage(s) => Some(("speech", s.file_contents.as_deref().unwrap_or_default())),
    }
}

impl Transmit {
    async fn transmit(&self, req: NewMessageReq) -> Result<GetTransmitTargetRsp, TransmitError> {
        let sender = req.caller().map(str::to_string).ok_or(TransmitError::NoCaller)?;
        let content = req.message.as_ref().ok_or(TransmitError::NoContent)?;
        let body = self.check(content)?;
        let started = Instant::now();
        let members = self.members.of(&req.chat_session_id).await?;
        Hop::TransmitMembership.record(started);
        // Unknown sessions and sessions you are not in look the same.
        if !members.contains(&sender) {
            return Err(TransmitError::UnknownSession);
        }
        let file_id = match attachment(body) {
            Some((name, bytes)) => Some(self.store(&sender, &req, name, bytes).await?),
            None => None,
        };
        let started = Instant::now();
        let sender_info = self.sender(&sender).await?;
        Hop::TransmitSenderProfile.record(started);
        let mut message = MessageInfo {
            // UUID v7: time-ordered, so ids sort like the messages they name.
            message_id: uuid::Uuid::now_v7().simple().to_string(),
            chat_session_id: req.chat_session_id.clone(),
            timestamp: chatmesh_common::unix_now(),
            // Queued and stored messages name their sender only: profiles (and avatars) are
            // filled in when messages are read, and pushed below.
            sender: Some(UserInfo { user_id: sender_info.user_id.clone(), ..Default::default() }),
            message: Some(MessageContent {
                message_type: content.message_type,
                msg_content: Some(strip(body, file_id)),
            }),
        };
        let started = Instant::now();
        self.queue.publish(message.encode_to_vec()).await.map_err(TransmitError::NotQueued)?;
        Hop::QueuePublishConfirm.record(started);
        message.sender = Some(sender_info);
        // Pushed images carry their bytes, as the seed forwards them; stored copies do not.
        if let (Some(MsgContent::ImageMessage(pushed)), MsgContent::ImageMessage(sent)) =
            (message.message.as_mut().and_then(|m| m.msg_content.as_mut()), body)
        {
            pushed.image_content = sent.image_content.clone();
        }
        Ok(GetTransmitTargetRsp { message: Some(message), target_id_list: members.to_vec(), ..Default::default() })
    }

    /// The content, if its type and payload agree and it is not empty.
    fn check<'a>(&self, content: &'a MessageContent) -> Result<&'a MsgContent, TransmitError> {
        let body = content.msg_content.as_ref().ok_or(TransmitError::NoContent)?;
        let (expected, actual) = match body {
            MsgContent::StringMessage(_) => (MessageType::String, "string_message"),
            MsgContent::ImageMessage(_) => (MessageType::Image, "image_message"),
            MsgContent::FileMessage(_) => (MessageType::File, "file_message"),
            MsgContent::SpeechMessage(_) => (MessageType::Speech, "speech_message"),
        };
        if content.message_type != expected as i32 {
            let declared = MessageType::try_from(content.message_type)
                .map(|t| t.as_str_name().to_string())
                .unwrap_or_else(|_| content.message_type.to_string());
            return Err(TransmitError::TypeMismatch { declared, actual });
        }
        match body {
            MsgContent::StringMessage(s) if s.content.trim().is_empty() => Err(TransmitError::EmptyText),
            MsgContent::StringMessage(s) if s.content.len() > self.max_text_bytes => {
                Err(TransmitError::TextTooLong(self.max_text_bytes))
            }
            MsgContent::FileMessage(f) if f.file_name.trim().is_empty() => Err(TransmitError::NoFileName),
            other => match attachment(other) {
                Some((_, [])) => Err(TransmitError::EmptyAttachment(actual_name(other))),
                _ => Ok(body),
            },
        }
    }

    /// Stores an attachment readable by the session's members; returns its file id.
    async fn store(
        &self,
        sender: &str,
        req: &NewMessageReq,
        name: &str,
        bytes: &[u8],
    ) -> Result<String, TransmitError> {
        let put = PutSingleFileReq {
            request_id: req.request_id.clone(),
            user_id: Some(sender.to_string()),
            file_data: Some(FileUploadData {
                file_name: name.to_string(),
                file_size: bytes.len() as i64,
                file_content: bytes.to_vec(),
            }),
            access: Some(FileAccess { chat_session_id: Some(req.chat_session_id.clone()), public_read: false }),
            ..Default::default()
        };
        let rsp = expect_success(self.files.clone().put_single_file(put).await)?;
        Ok(rsp.file_info.and_then(|f| f.file_id).unwrap_or_default())
    }

    async fn sender(&self, user_id: &str) -> Result<UserInfo, TransmitError> {
        let generation = match self.profiles.cached(user_id) {
            Cached::Fresh(info) => return Ok(info),
            Cached::Renew(info, generation) => {
                let (users, user_id2) = (self.users.clone(), user_id.to_string());
                self.profiles.renew(user_id, generation, async move { profile(users, user_id2).await.ok() });
                return Ok(info);
            }
            Cached::Miss(generation) => generation,
        };
        let info = profile(self.users.clone(), user_id.to_string()).await?;
        self.profiles.remember(user_id, generation, info.clone());
        Ok(info)
    }
}

/// `user_id`'s profile from the user service (an empty one for an unknown user).
async fn profile(mut users: UserServiceClient<GrpcChannel>, user_id: String) -> Result<UserInfo, TransmitError> {
    let req = GetMultiUserInfoReq { request_id: chatmesh_common::new_id(), users_id: vec![user_id.clone()] };
    let mut rsp = expect_success(users.get_multi_user_info(req).await)?;
    Ok(rsp.users_info.remove(&user_id).unwrap_or_else(|| UserInfo { user_id, ..Default::default() }))
}

fn actual_name(content: &MsgContent) -> &'static str {
    match content {
        MsgContent::StringMessage(_) => "text",
        MsgContent::ImageMessage(_) => "image",
        MsgContent::FileMessage(_) => "file",
        MsgContent::SpeechMessage(_) => "voice message",
    }
}

/// The content as stored and queued: attachment bytes replaced by the file id.
fn strip(content: &MsgContent, file_id: Option<String>) -> MsgContent {
    match content {
        MsgContent::StringMessage(s) => MsgContent::StringMessage(s.clone()),
        MsgContent::ImageMessage(_) => MsgContent::ImageMessage(ImageMessageInfo { file_id, image_content: None }),
        MsgContent::FileMessage(f) => MsgContent::FileMessage(FileMessageInfo {
            file_id,
            file_size: f.file_contents.as_ref().map_or(0, |c| c.len() as i64),
            file_name: f.file_name.clone(),
            file_contents: None,
        }),
        MsgContent::SpeechMessage(_) => MsgContent::SpeechMessage(SpeechMessageInfo { file_id, file_contents: None }),
    }
}
