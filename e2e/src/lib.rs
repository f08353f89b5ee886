//! A Rust client of the chatmesh gateway, speaking the seed's protocol: protobuf bodies over
//! `POST /service/...`, and the notification WebSocket. The end-to-end tests and the load tools
//! use it; it knows nothing of the server's code.

use std::time::Duration;

use chatmesh_proto::*;
use futures_util::{SinkExt, StreamExt};
use prost::Message;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("HTTP: {0}")]
    Http(#[from] reqwest::Error),
    #[error("HTTP status {0}")]
    Status(reqwest::StatusCode),
    #[error("response is not protobuf: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("server refused: {0}")]
    Refused(String),
    #[error("WebSocket: {0}")]
    Ws(#[from] tokio_tungstenite::tungstenite::Error),
}

/// One client of one gateway; cheap to clone.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    ws_base: String,
}

impl Client {
    /// `http_base` like `http://127.0.0.1:9000`; `ws_base` like `ws://127.0.0.1:9001`.
    pub fn new(http_base: &str, ws_base: &str) -> Self {
        Self {
            http: reqwest::Client::builder().timeout(Duration::from_secs(60)).build().expect("HTTP client"),
            base: http_base.trim_end_matches('/').to_string(),
            ws_base: ws_base.trim_end_matches('/').to_string(),
        }
    }

    /// A client of the same gateway with connections of its own (clones share theirs).
    pub fn fresh(&self) -> Self {
        Self::new(&self.base, &self.ws_base)
    }

    /// Posts raw bytes with a content type; the status and body as they came.
    pub async fn post_raw(&self, path: &str, content_type: &str, body: Vec<u8>) -> Result<(u16, Vec<u8>), ClientError> {
        let rsp = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await?;
        Ok((rsp.status().as_u16(), rsp.bytes().await?.to_vec()))
    }

    /// Sends `req` to `path` and decodes the response, whatever its `success`.
    pub async fn call<Req: Message, Rsp: Message + Default>(&self, path: &str, req: &Req) -> Result<Rsp, ClientError> {
        let (status, body) = self.post_raw(path, "application/x-protobuf", req.encode_to_vec()).await?;
        if status != 200 {
            return Err(ClientError::Status(reqwest::StatusCode::from_u16(status).unwrap_or_default()));
        }
        Ok(Rsp::decode(body.as_slice())?)
    }

    /// Like [`Client::call`], but `success=false` is an error carrying `errmsg`.
    pub async fn ok<Req: Message, Rsp: Reply>(&self, path: &str, req: &Req) -> Result<Rsp, ClientError> {
        let rsp: Rsp = self.call(path, req).await?;
        if rsp.success() { Ok(rsp) } else { Err(ClientError::Refused(rsp.errmsg().to_string())) }
    }

    pub async fn register(&self, nickname: &str, password: &str) -> Result<(), ClientError> {
        let req = UserRegisterReq {
            request_id: rid(),
            nickname: nickname.into(),
            password: password.into(),
            ..Default::default()
        };
        self.ok::<_, UserRegisterRsp>("/service/user/username_register", &req).await.map(drop)
    }

    /// Logs in by nickname and password; returns the login session id.
    pub async fn login(&self, nickname: &str, password: &str) -> Result<String, ClientError> {
        let req = UserLoginReq {
            request_id: rid(),
            nickname: nickname.into(),
            password: password.into(),
            ..Default::default()
        };
        Ok(self.ok::<_, UserLoginRsp>("/service/user/username_login", &req).await?.login_session_id)
    }

    /// Asks for an SMS code; returns the verify code id.
    pub async fn phone_code(&self, phone: &str) -> Result<String, ClientError> {
        let req = PhoneVerifyCodeReq { request_id: rid(), phone_number: phone.into() };
        Ok(self.ok::<_, PhoneVerifyCodeRsp>("/service/user/get_phone_verify_code", &req).await?.verify_code_id)
    }

    pub async fn phone_register(&self, phone: &str, code_id: &str, code: &str) -> Result<(), ClientError> {
        let req = PhoneRegisterReq {
            request_id: rid(),
            phone_number: phone.into(),
            verify_code_id: code_id.into(),
            verify_code: code.into(),
        };
        self.ok::<_, PhoneRegisterRsp>("/service/user/phone_register", &req).await.map(drop)
    }

    pub async fn phone_login(&self, phone: &str, code_id: &str, code: &str) -> Result<String, ClientError> {
        let req = PhoneLoginReq {
            request_id: rid(),
            phone_number: phone.into(),
            verify_code_id: code_id.into(),
            verify_code: code.into(),
        };
        Ok(self.ok::<_, PhoneLoginRsp>("/service/user/phone_login", &req).await?.login_session_id)
    }

    pub async fn user_info(&self, session: &str) -> Result<UserInfo, ClientError> {
        let req = GetUserInfoReq { request_id: rid(), session_id: Some(session.into()), user_id: None };
        Ok(self.ok::<_, GetUserInfoRsp>("/service/user/get_user_info", &req).await?.user_info.unwrap_or_default())
    }

    pub async fn put_file(&self, session: &str, name: &str, content: Vec<u8>) -> Result<String, ClientError> {
        let req = PutSingleFileReq {
            request_id: rid(),
            session_id: Some(session.into()),
            file_data: Some(FileUploadData {
                file_name: name.into(),
                file_size: content.len() as i64,
                file_content: content,
            }),
            ..Default::default()
        };
        let rsp: PutSingleFileRsp = self.ok("/service/file/put_single_file", &req).await?;
        Ok(rsp.file_info.and_then(|f| f.file_id).unwrap_or_default())
    }

    pub async fn get_file(&self, session: &str, file_id: &str) -> Result<Vec<u8>, ClientError> {
        let req = GetSingleFileReq {
            request_id: rid(),
            file_id: file_id.into(),
            session_id: Some(session.into()),
            user_id: None,
        };
        let rsp: GetSingleFileRsp = self.ok("/service/file/get_single_file", &req).await?;
        Ok(rsp.file_data.map(|f| f.file_content).unwrap_or_default())
    }

    /// Users matching `key` (not yourself, not your friends).
    pub async fn search(&self, session: &str, key: &str) -> Result<Vec<UserInfo>, ClientError> {
        let req = FriendSearchReq {
            request_id: rid(),
            search_key: key.into(),
            session_id: Some(session.into()),
            user_id: None,
        };
        Ok(self.ok::<_, FriendSearchRsp>("/service/friend/search_friend", &req).await?.user_info)
    }

    /// Applies to befriend `user_id`; returns the application's event id.
    pub async fn apply(&self, session: &str, user_id: &str) -> Result<String, ClientError> {
        let req = FriendAddReq {
            request_id: rid(),
            session_id: Some(session.into()),
            user_id: None,
            respondent_id: user_id.into(),
        };
        Ok(self.ok::<_, FriendAddRsp>("/service/friend/add_friend_apply", &req).await?.notify_event_id)
    }

    /// Accepts or rejects application `event_id` from `applicant`.
    pub async fn process(
        &self,
        session: &str,
        event_id: &str,
        applicant: &str,
        agree: bool,
    ) -> Result<(), ClientError> {
        let req = FriendAddProcessReq {
            request_id: rid(),
            notify_event_id: event_id.into(),
            agree,
            apply_user_id: applicant.into(),
            session_id: Some(session.into()),
            user_id: None,
        };
        self.ok::<_, FriendAddProcessRsp>("/service/friend/add_friend_process", &req).await.map(drop)
    }

    pub async fn pending(&self, session: &str) -> Result<Vec<FriendEvent>, ClientError> {
        let req = GetPendingFriendEventListReq { request_id: rid(), session_id: Some(session.into()), user_id: None };
        Ok(self.ok::<_, GetPendingFriendEventListRsp>("/service/friend/get_pending_friend_events", &req).await?.event)
    }

    pub async fn friends(&self, session: &str) -> Result<Vec<UserInfo>, ClientError> {
        let req = GetFriendListReq { request_id: rid(), session_id: Some(session.into()), user_id: None };
        Ok(self.ok::<_, GetFriendListRsp>("/service/friend/get_friend_list", &req).await?.friend_list)
    }

    pub async fn remove_friend(&self, session: &str, peer: &str) -> Result<(), ClientError> {
        let req = FriendRemoveReq {
            request_id: rid(),
            session_id: Some(session.into()),
            user_id: None,
            peer_id: peer.into(),
        };
        self.ok::<_, FriendRemoveRsp>("/service/friend/remove_friend", &req).await.map(drop)
    }

    pub async fn chat_sessions(&self, session: &str) -> Result<Vec<ChatSessionInfo>, ClientError> {
        let req = GetChatSessionListReq { request_id: rid(), session_id: Some(session.into()), user_id: None };
        Ok(self
            .ok::<_, GetChatSessionListRsp>("/service/friend/get_chat_session_list", &req)
            .await?
            .chat_session_info_list)
    }

    /// Creates a group session; `members` must include the caller.
    pub async fn create_group(&self, session: &str, name: &str, members: &[String]) -> Result<(), ClientError> {
        let req = ChatSessionCreateReq {
            request_id: rid(),
            session_id: Some(session.into()),
            user_id: None,
            chat_session_name: name.into(),
            member_id_list: members.to_vec(),
        };
        self.ok::<_, ChatSessionCreateRsp>("/service/friend/create_chat_session", &req).await.map(drop)
    }

    pub async fn members(&self, session: &str, chat_session_id: &str) -> Result<Vec<UserInfo>, ClientError> {
        let req = GetChatSessionMemberReq {
            request_id: rid(),
            session_id: Some(session.into()),
            user_id: None,
            chat_session_id: chat_session_id.into(),
        };
        Ok(self
            .ok::<_, GetChatSessionMemberRsp>("/service/friend/get_chat_session_member", &req)
            .await?
            .member_info_list)
    }

    /// Sends a message to chat session `chat_session_id`.
    pub async fn send(&self, session: &str, chat_session_id: &str, message: MessageContent) -> Result<(), ClientError> {
        let req = NewMessageReq {
            request_id: rid(),
            session_id: Some(session.into()),
            user_id: None,
            chat_session_id: chat_session_id.into(),
            message: Some(message),
        };
        self.ok::<_, NewMessageRsp>("/service/message_transmit/new_message", &req).await.map(drop)
    }

    pub async fn send_text(&self, session: &str, chat_session_id: &str, text: &str) -> Result<(), ClientError> {
        self.send(session, chat_session_id, text_message(text)).await
    }

    /// The `count` newest messages of a session, oldest first.
    pub async fn recent(
        &self,
        session: &str,
        chat_session_id: &str,
        count: i64,
    ) -> Result<Vec<MessageInfo>, ClientError> {
        let req = GetRecentMsgReq {
            request_id: rid(),
            chat_session_id: chat_session_id.into(),
            msg_count: count,
            cur_time: None,
            user_id: None,
            session_id: Some(session.into()),
        };
        Ok(self.ok::<_, GetRecentMsgRsp>("/service/message_storage/get_recent", &req).await?.msg_list)
    }

    /// Messages of a session between two Unix times (inclusive), oldest first.
    pub async fn history(
        &self,
        session: &str,
        chat_session_id: &str,
        from: i64,
        to: i64,
    ) -> Result<Vec<MessageInfo>, ClientError> {
        let req = GetHistoryMsgReq {
            request_id: rid(),
            chat_session_id: chat_session_id.into(),
            start_time: from,
            over_time: to,
            user_id: None,
            session_id: Some(session.into()),
        };
        Ok(self.ok::<_, GetHistoryMsgRsp>("/service/message_storage/get_history", &req).await?.msg_list)
    }

    /// Text messages of a session containing `key`.
    pub async fn search_messages(
        &self,
        session: &str,
        chat_session_id: &str,
        key: &str,
    ) -> Result<Vec<MessageInfo>, ClientError> {
        let req = MsgSearchReq {
            request_id: rid(),
            user_id: None,
            session_id: Some(session.into()),
            chat_session_id: chat_session_id.into(),
            search_key: key.into(),
        };
        Ok(self.ok::<_, MsgSearchRsp>("/service/message_storage/search_history", &req).await?.msg_list)
    }

    /// Opens the notification WebSocket at `path` and authenticates with `session`.
    pub async fn notifications(&self, path: &str, session: &str) -> Result<Notifications, ClientError> {
        let mut socket = self.websocket(&self.ws_base, path).await?;
        let auth = ClientAuthenticationReq { request_id: rid(), session_id: session.into() };
        socket.send_raw(auth.encode_to_vec()).await?;
        Ok(socket)
    }

    /// Opens a WebSocket without authenticating: `base` is the WebSocket port's URL or the HTTP
    /// one (`ws://host:9000`, whose path is `/ws`).
    pub async fn websocket(&self, base: &str, path: &str) -> Result<Notifications, ClientError> {
        let (ws, _) = tokio_tungstenite::connect_async(format!("{base}{path}")).await?;
        Ok(Notifications { ws, pings: 0 })
    }
}

/// A text message's content.
pub fn text_message(text: &str) -> MessageContent {
    MessageContent {
        message_type: MessageType::String as i32,
        msg_content: Some(message_content::MsgContent::StringMessage(StringMessageInfo { content: text.into() })),
    }
}

/// A fresh request id.
pub fn rid() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// What the server did next on the notification socket.
// A test client's value, returned once per read and matched at once: boxing the push would only
// add noise to every test that matches on it.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, PartialEq)]
pub enum Event {
    Notify(NotifyMessage),
    /// The server closed the socket (with its close code and reason, if any).
    Closed(Option<(u16, String)>),
    /// Nothing within the wait.
    Quiet,
}

pub struct Notifications {
    ws: Ws,
    /// Server pings seen so far (answered automatically).
    pub pings: usize,
}

impl Notifications {
    /// The next notification or close within `wait`; pings are counted and skipped.
    pub async fn next(&mut self, wait: Duration) -> Event {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Event::Quiet,
                Ok(None) | Ok(Some(Err(_))) => return Event::Closed(None),
                Ok(Some(Ok(WsMessage::Binary(b)))) => match NotifyMessage::decode(b.as_ref()) {
                    Ok(n) => return Event::Notify(n),
                    Err(_) => return Event::Closed(Some((0, "undecodable frame".into()))),
                },
                Ok(Some(Ok(WsMessage::Close(frame)))) => {
                    return Event::Closed(frame.map(|f| (u16::from(f.code), f.reason.to_string())));
                }
                Ok(Some(Ok(WsMessage::Ping(_)))) => self.pings += 1,
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// The next notification, which must be of `kind` and arrive within `wait`.
    pub async fn expect(&mut self, kind: NotifyType, wait: Duration) -> NotifyMessage {
        match self.next(wait).await {
            Event::Notify(n) if n.notify_type() == kind => n,
            other => panic!("expected {kind:?}, got {other:?}"),
        }
    }

    /// Sends raw bytes (for tests of what the server does with bad frames).
    pub async fn send_raw(&mut self, bytes: Vec<u8>) -> Result<(), ClientError> {
        Ok(self.ws.send(WsMessage::Binary(bytes.into())).await?)
    }

    pub async fn close(mut self) {
        let _ = self
            .ws
            .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            }))
            .await;
    }
}

/// A picture of random pixels: PNG cannot compress it, so it is about `w * h * 3` bytes (avatar
/// tests and the abuse benchmark).
pub fn noise_png(w: u32, h: u32) -> Vec<u8> {
    let mut seed = 0x2545_f491_u32;
    let img = image::RgbImage::from_fn(w, h, |_, _| {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        image::Rgb([seed as u8, (seed >> 8) as u8, (seed >> 16) as u8])
    });
    let mut out = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .expect("PNG to memory");
    out
}
