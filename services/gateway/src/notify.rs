//! The notifications the seed pushes over the WebSocket, composed after the calls that cause
//! them, and delivered to every device of each recipient.

use std::collections::HashMap;

use chatmesh_proto::notify_message::NotifyRemarks;
use chatmesh_proto::*;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;

use chatmesh_common::telemetry::Hop;

use crate::Gateway;

impl Gateway {
    /// Delivers `notify` to every connected device of `user_id`, on whichever gateway.
    pub async fn notify(&self, user_id: &str, notify: NotifyMessage) {
        self.notify_all(&[user_id.to_string()], notify, None).await;
    }

    /// Delivers `notify` to every device of `users` except the one logged in with `skip_session`.
    pub async fn notify_all(&self, users: &[String], notify: NotifyMessage, skip_session: Option<&str>) {
        metrics::counter!("chatmesh_gateway_notifications_total", "type" => notify.notify_type().as_str_name())
            .increment(users.len() as u64);
        self.bus.send(users, &notify, skip_session).await;
    }

    /// Profiles by id, from the user service; empty on failure (the notification then carries
    /// ids only rather than not being sent).
    async fn profiles(&self, ids: &[String]) -> HashMap<String, UserInfo> {
        let req = GetMultiUserInfoReq { request_id: chatmesh_common::new_id(), users_id: ids.to_vec() };
        match chatmesh_common::grpc::expect_success(self.user.clone().get_multi_user_info(req).await) {
            Ok(rsp) => rsp.users_info,
            Err(e) => {
                tracing::warn!(error = %e, "profiles for a notification unavailable");
                HashMap::new()
            }
        }
    }
}

fn profile(infos: &HashMap<String, UserInfo>, id: &str) -> UserInfo {
    infos.get(id).cloned().unwrap_or_else(|| UserInfo { user_id: id.to_string(), ..Default::default() })
}

fn message(kind: NotifyType, event_id: Option<String>, remarks: NotifyRemarks) -> NotifyMessage {
    NotifyMessage { notify_event_id: event_id, notify_type: kind as i32, notify_remarks: Some(remarks) }
}

/// The one-to-one session as `peer` appears in it to the other member.
fn single_session(session_id: &str, peer: &UserInfo) -> NotifyMessage {
    let info = ChatSessionInfo {
        single_chat_friend_id: Some(peer.user_id.clone()),
        chat_session_id: session_id.to_string(),
        chat_session_name: peer.nickname.clone(),
        prev_message: None,
        avatar: Some(peer.avatar.clone()),
    };
    let remarks = NotifyRemarks::NewChatSessionInfo(NotifyNewChatSession { chat_session_info: Some(info) });
    message(NotifyType::ChatSessionCreateNotify, None, remarks)
}

/// `FRIEND_ADD_APPLY_NOTIFY` to the respondent, with the applicant's profile.
pub fn friend_apply(gw: Gateway, req: FriendAddReq, rsp: FriendAddRsp) -> BoxFuture<'static, ()> {
    async move {
        let applicant = req.user_id.unwrap_or_default();
        let infos = gw.profiles(std::slice::from_ref(&applicant)).await;
        let remarks =
            NotifyRemarks::FriendAddApply(NotifyFriendAddApply { user_info: Some(profile(&infos, &applicant)) });
        gw.notify(&req.respondent_id, message(NotifyType::FriendAddApplyNotify, Some(rsp.notify_event_id), remarks))
            .await;
    }
    .boxed()
}

/// `FRIEND_ADD_PROCESS_NOTIFY` to the applicant; on agreement `CHAT_SESSION_CREATE_NOTIFY` to
/// both, each seeing the other as the session.
pub fn friend_processed(gw: Gateway, req: FriendAddProcessReq, rsp: FriendAddProcessRsp) -> BoxFuture<'static, ()> {
    async move {
        let processor = req.user_id.unwrap_or_default();
        let applicant = req.apply_user_id;
        let infos = gw.profiles(&[processor.clone(), applicant.clone()]).await;
        let remarks = NotifyRemarks::FriendProcessResult(NotifyFriendAddProcess {
            agree: req.agree,
            user_info: Some(profile(&infos, &processor)),
        });
        gw.notify(&applicant, message(NotifyType::FriendAddProcessNotify, Some(req.notify_event_id), remarks)).await;
        if let Some(session) = rsp.new_session_id.filter(|_| req.agree) {
            gw.notify(&applicant, single_session(&session, &profile(&infos, &processor))).await;
            gw.notify(&processor, single_session(&session, &profile(&infos, &applicant))).await;
        }
    }
    .boxed()
}

/// `FRIEND_REMOVE_NOTIFY` to the removed friend.
pub fn friend_removed(gw: Gateway, req: FriendRemoveReq, _rsp: FriendRemoveRsp) -> BoxFuture<'static, ()> {
    async move {
        let remarks = NotifyRemarks::FriendRemove(NotifyFriendRemove { user_id: req.user_id.unwrap_or_default() });
        gw.notify(&req.peer_id, message(NotifyType::FriendRemoveNotify, None, remarks)).await;
    }
    .boxed()
}

/// `CHAT_SESSION_CREATE_NOTIFY` to every member of a new group.
pub fn group_created(gw: Gateway, req: ChatSessionCreateReq, rsp: ChatSessionCreateRsp) -> BoxFuture<'static, ()> {
    async move {
        let remarks =
            NotifyRemarks::NewChatSessionInfo(NotifyNewChatSession { chat_session_info: rsp.chat_session_info });
        let notify = message(NotifyType::ChatSessionCreateNotify, None, remarks);
        let mut members = req.member_id_list;
        members.sort();
        members.dedup();
        gw.notify_all(&members, notify, None).await;
    }
    .boxed()
}

/// Sends a new message through the transmit service and, once it is queued, pushes
/// `CHAT_MESSAGE_NOTIFY` to every member's devices but the sending one.
pub async fn new_message(gw: Gateway, req: NewMessageReq) -> Result<tonic::Response<NewMessageRsp>, tonic::Status> {
    let sending_session = req.session_id.clone();
    let started = std::time::Instant::now();
    let rsp = gw.transmit.get_transmit_target(req).await?.into_inner();
    Hop::TransmitCall.record(started);
    if rsp.success {
        let remarks = NotifyRemarks::NewMessageInfo(NotifyNewMessage { message_info: rsp.message });
        let notify = message(NotifyType::ChatMessageNotify, None, remarks);
        gw.notify_all(&rsp.target_id_list, notify, sending_session.as_deref()).await;
    }
    Ok(tonic::Response::new(NewMessageRsp { request_id: rsp.request_id, success: rsp.success, errormsg: rsp.errormsg }))
}
