//! `FriendService`: the nine RPCs of the seed, made safe: no applying to yourself, to a friend
//! or twice; an application is processed once and only by its addressee; sessions and their
//! members are shown to members only.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use chatmesh_common::grpc::{GrpcChannel, expect_success, reply};
use chatmesh_common::messages::{self, MessageRow};
use chatmesh_common::search::SearchIndex;
use chatmesh_proto::friend_service_server::FriendService;
use chatmesh_proto::user_service_client::UserServiceClient;
use chatmesh_proto::*;
use tonic::{Request, Response, Status};

use crate::error::FriendError;
use crate::store::{FriendStore, SINGLE};

/// Most members of one group.
pub const MAX_GROUP_MEMBERS: usize = 500;
/// Most users one search returns.
pub const SEARCH_RESULTS: usize = 20;

pub struct Friends {
    pub store: FriendStore,
    /// Where a deleted session is announced (the transmit service caches members).
    pub notices: chatmesh_common::members::MembershipNotices,
    pub index: Arc<dyn SearchIndex>,
    pub users: UserServiceClient<GrpcChannel>,
}

type Rpc<T> = Result<Response<T>, Status>;

fn caller(req: &impl Envelope) -> Result<String, FriendError> {
    req.caller().map(str::to_string).ok_or(FriendError::NoCaller)
}

#[tonic::async_trait]
impl FriendService for Friends {
    async fn get_friend_list(&self, req: Request<GetFriendListReq>) -> Rpc<GetFriendListRsp> {
        let req = req.into_inner();
        let result = async {
            let ids = self.store.friends(&caller(&req)?).await?;
            let friend_list = self.infos_in_order(&ids).await?;
            Ok::<_, FriendError>(GetFriendListRsp { friend_list, ..Default::default() })
        };
        reply(req.request_id.clone(), result.await)
    }

    async fn friend_remove(&self, req: Request<FriendRemoveReq>) -> Rpc<FriendRemoveRsp> {
        let req = req.into_inner();
        let result = async {
            let me = caller(&req)?;
            if let Some(session) = self.store.unfriend(&me, &req.peer_id).await? {
                self.notices.changed(&session).await;
            }
            Ok::<_, FriendError>(FriendRemoveRsp::default())
        };
        reply(req.request_id.clone(), result.await)
    }

    async fn friend_add(&self, req: Request<FriendAddReq>) -> Rpc<FriendAddRsp> {
        let req = req.into_inner();
        let result = async {
            let me = caller(&req)?;
            let to = &req.respondent_id;
            if *to == me {
                return Err(FriendError::SelfApply);
            }
            self.require_users(std::slice::from_ref(to)).await?;
            if self.store.are_friends(&me, to).await? {
                return Err(FriendError::AlreadyFriends);
            }
            let notify_event_id = chatmesh_common::new_id();
            self.store.apply(&notify_event_id, &me, to).await?;
            Ok(FriendAddRsp { notify_event_id, ..Default::default() })
        };
        reply(req.request_id.clone(), result.await)
    }

    async fn friend_add_process(&self, req: Request<FriendAddProcessReq>) -> Rpc<FriendAddProcessRsp> {
        let req = req.into_inner();
        let result = async {
            let me = caller(&req)?;
            let session_id = chatmesh_common::new_id();
            self.store.settle(&req.notify_event_id, &req.apply_user_id, &me, req.agree, &session_id).await?;
            Ok::<_, FriendError>(FriendAddProcessRsp {
                new_session_id: req.agree.then_some(session_id),
                ..Default::default()
            })
        };
        reply(req.request_id.clone(), result.await)
    }

    async fn friend_search(&self, req: Request<FriendSearchReq>) -> Rpc<FriendSearchRsp> {
        let req = req.into_inner();
        let result = async {
            let me = caller(&req)?;
            let key = req.search_key.trim();
            if key.is_empty() {
                return Err(FriendError::EmptySearch);
            }
            // As the seed does: leave out yourself and your friends.
            let mut hidden: BTreeSet<String> = self.store.friends(&me).await?.into_iter().collect();
            hidden.insert(me);
            let found = self.index.search_users(key, SEARCH_RESULTS + hidden.len()).await?;
            let ids: Vec<String> = found.into_iter().filter(|id| !hidden.contains(id)).take(SEARCH_RESULTS).collect();
            // A user the index knows but the database lost (or vice versa) is skipped, not fatal.
            let ids = self
                .store
                .existing_users(&ids)
                .await
                .map(|known| ids.iter().filter(|id| known.contains(id)).cloned().collect::<Vec<_>>())?;
            Ok(FriendSearchRsp { user_info: self.infos_in_order(&ids).await?, ..Default::default() })
        };
        reply(req.request_id.clone(), result.await)
    }

    async fn get_chat_session_list(&self, req: Request<GetChatSessionListReq>) -> Rpc<GetChatSessionListRsp> {
        let req = req.into_inner();
        let result = async {
            let me = caller(&req)?;
            let sessions = self.store.sessions_of(&me).await?;
            // A one-to-one session is shown as the other person: their id, name and avatar.
            let mut peers = HashMap::new();
            for s in sessions.iter().filter(|s| s.chat_session_type == SINGLE) {
                if let Some(peer) = self.store.members(&s.chat_session_id).await?.into_iter().find(|m| *m != me) {
                    peers.insert(s.chat_session_id.clone(), peer);
                }
            }
            // Each session's last message, with its sender, as the seed's list shows it.
            let ids: Vec<String> = sessions.iter().map(|s| s.chat_session_id.clone()).collect();
            let last: HashMap<String, MessageRow> = messages::last_of_sessions(&self.store.db, &ids)
                .await?
                .into_iter()
                .map(|m| (m.chat_session_id.clone(), m))
                .collect();
            let mut wanted: Vec<String> = peers.values().cloned().collect();
            wanted.extend(last.values().map(|m| m.user_id.clone()));
            wanted.sort();
            wanted.dedup();
            let infos = self.infos(&wanted).await?;
            let chat_session_info_list = sessions
                .into_iter()
                .map(|s| {
                    let prev_message = last.get(&s.chat_session_id).map(|m| {
                        m.to_info(
                            infos
                                .get(&m.user_id)
                                .cloned()
                                .unwrap_or_else(|| UserInfo { user_id: m.user_id.clone(), ..Default::default() }),
                        )
                    });
                    match peers.get(&s.chat_session_id).and_then(|p| infos.get(p)) {
                        Some(peer) => ChatSessionInfo {
                            single_chat_friend_id: Some(peer.user_id.clone()),
                            chat_session_id: s.chat_session_id,
                            chat_session_name: peer.nickname.clone(),
                            prev_message,
                            avatar: Some(peer.avatar.clone()),
                        },
                        None => ChatSessionInfo {
                            chat_session_id: s.chat_session_id,
                            chat_session_name: s.chat_session_name,
                            prev_message,
                            ..Default::default()
                        },
                    }
                })
                .collect();
            Ok::<_, FriendError>(GetChatSessionListRsp { chat_session_info_list, ..Default::default() })
        };
        reply(req.request_id.clone(), result.await)
    }

    async fn chat_session_create(&self, req: Request<ChatSessionCreateReq>) -> Rpc<ChatSessionCreateRsp> {
        let req = req.into_inner();
        let result = async {
            let me = caller(&req)?;
            let name = req.chat_session_name.trim();
            if name.is_empty() || name.chars().count() > 64 {
                return Err(FriendError::BadSessionName);
            }
            let members: Vec<String> =
                req.member_id_list.iter().cloned().collect::<BTreeSet<_>>().into_iter().collect();
            if !members.contains(&me) {
                return Err(FriendError::GroupWithoutCreator);
            }
            if members.len() < 2 {
                return Err(FriendError::GroupTooSmall);
            }
            if members.len() > MAX_GROUP_MEMBERS {
                return Err(FriendError::GroupTooLarge(MAX_GROUP_MEMBERS));
            }
            self.require_users(&members).await?;
            // Nobody is put in a group by a stranger.
            let friends: BTreeSet<String> = self.store.friends(&me).await?.into_iter().collect();
            if let Some(stranger) = members.iter().find(|m| **m != me && !friends.contains(*m)) {
                return Err(FriendError::NotAFriend(stranger.clone()));
            }
            let chat_session_id = chatmesh_common::new_id();
            self.store.create_group(&chat_session_id, name, &members).await?;
            let info = ChatSessionInfo { chat_session_id, chat_session_name: name.to_string(), ..Default::default() };
            Ok(ChatSessionCreateRsp { chat_session_info: Some(info), ..Default::default() })
        };
        reply(req.request_id.clone(), result.await)
    }

    async fn get_chat_session_member(&self, req: Request<GetChatSessionMemberReq>) -> Rpc<GetChatSessionMemberRsp> {
        let req = req.into_inner();
        let result = async {
            let me = caller(&req)?;
            let members = self.store.members(&req.chat_session_id).await?;
            // Unknown and not-yours look the same: ids cannot be probed.
            if !members.contains(&me) {
                return Err(FriendError::UnknownSession);
            }
            Ok(GetChatSessionMemberRsp { member_info_list: self.infos_in_order(&members).await?, ..Default::default() })
        };
        reply(req.request_id.clone(), result.await)
    }

    async fn get_pending_friend_event_list(
        &self,
        req: Request<GetPendingFriendEventListReq>,
    ) -> Rpc<GetPendingFriendEventListRsp> {
        let req = req.into_inner();
        let result = async {
            let pending = self.store.pending(&caller(&req)?).await?;
            let infos = self.infos(&pending.iter().map(|(_, from)| from.clone()).collect::<Vec<_>>()).await?;
            let event = pending
                .into_iter()
                .map(|(event_id, from)| FriendEvent { event_id, sender: infos.get(&from).cloned() })
                .collect();
            Ok::<_, FriendError>(GetPendingFriendEventListRsp { event, ..Default::default() })
        };
        reply(req.request_id.clone(), result.await)
    }
}

impl Friends {
    async fn require_users(&self, ids: &[String]) -> Result<(), FriendError> {
        let known = self.store.existing_users(ids).await?;
        match ids.iter().find(|id| !known.contains(id)) {
            Some(missing) => Err(FriendError::UnknownUser(missing.clone())),
            None => Ok(()),
        }
    }

    /// Profiles (with avatars) from the user service, by id.
    async fn infos(&self, ids: &[String]) -> Result<HashMap<String, UserInfo>, FriendError> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let req = GetMultiUserInfoReq { request_id: chatmesh_common::new_id(), users_id: ids.to_vec() };
        Ok(expect_success(self.users.clone().get_multi_user_info(req).await)?.users_info)
    }

    async fn infos_in_order(&self, ids: &[String]) -> Result<Vec<UserInfo>, FriendError> {
        let mut infos = self.infos(ids).await?;
        Ok(ids.iter().filter_map(|id| infos.remove(id)).collect())
    }
}
