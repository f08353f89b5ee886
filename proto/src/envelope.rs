//! The fields every request and response of the seed shares, as traits, so the gateway and the
//! services handle them once: `request_id`, the caller's `session_id`/`user_id`, and
//! `success` + the error text (named `errmsg` in most messages, `errormsg` in some).

use crate::bite_im::*;

/// A response: `request_id`, `success`, and the error message field 3.
pub trait Reply: prost::Message + Default + 'static {
    fn set_outcome(&mut self, request_id: String, success: bool, errmsg: String);
    fn success(&self) -> bool;
    fn errmsg(&self) -> &str;

    /// The response that reports `errmsg` and carries nothing else.
    fn failure(request_id: String, errmsg: impl Into<String>) -> Self {
        let mut rsp = Self::default();
        rsp.set_outcome(request_id, false, errmsg.into());
        rsp
    }
}

/// A request: its id, and for session-scoped ones the login session and the resolved user.
pub trait Envelope: prost::Message + Default + 'static {
    fn request_id(&self) -> &str;
    /// The login session the client sent; `None` for routes that need no login.
    fn session_id(&self) -> Option<&str> {
        None
    }
    /// Sets the caller's user id (the gateway's, never the client's).
    fn set_user_id(&mut self, _user_id: String) {}
    /// The caller's user id as set by the gateway.
    fn user_id(&self) -> &str {
        ""
    }
    /// The caller: the gateway-set user id, if there is one (empty counts as none).
    fn caller(&self) -> Option<&str> {
        Some(self.user_id()).filter(|id| !id.is_empty())
    }
    /// Clears fields a client must never set (internal extensions).
    fn clear_internal(&mut self) {}
}

macro_rules! replies {
    ($($t:ident . $err:ident),* $(,)?) => {$(
        impl Reply for $t {
            fn set_outcome(&mut self, request_id: String, success: bool, errmsg: String) {
                self.request_id = request_id;
                self.success = success;
                self.$err = errmsg;
            }
            fn success(&self) -> bool {
                self.success
            }
            fn errmsg(&self) -> &str {
                &self.$err
            }
        }
    )*};
}

replies!(
    UserRegisterRsp.errmsg,
    UserLoginRsp.errmsg,
    PhoneVerifyCodeRsp.errmsg,
    PhoneRegisterRsp.errmsg,
    PhoneLoginRsp.errmsg,
    GetUserInfoRsp.errormsg,
    GetMultiUserInfoRsp.errormsg,
    SetUserAvatarRsp.errormsg,
    SetUserNicknameRsp.errormsg,
    SetUserDescriptionRsp.errmsg,
    SetUserPhoneNumberRsp.errmsg,
    GetFriendListRsp.errmsg,
    FriendRemoveRsp.errmsg,
    FriendAddRsp.errmsg,
    FriendAddProcessRsp.errmsg,
    GetPendingFriendEventListRsp.errmsg,
    FriendSearchRsp.errmsg,
    GetChatSessionListRsp.errmsg,
    ChatSessionCreateRsp.errmsg,
    GetChatSessionMemberRsp.errmsg,
    GetSingleFileRsp.errmsg,
    GetMultiFileRsp.errmsg,
    PutSingleFileRsp.errmsg,
    PutMultiFileRsp.errmsg,
    GetHistoryMsgRsp.errmsg,
    GetRecentMsgRsp.errmsg,
    MsgSearchRsp.errmsg,
    NewMessageRsp.errormsg,
    GetTransmitTargetRsp.errormsg,
    SpeechRecognitionRsp.errmsg,
    UserLogoutRsp.errmsg,
    DeleteFilesRsp.errmsg,
);

macro_rules! open_requests {
    ($($t:ident),* $(,)?) => {$(
        impl Envelope for $t {
            fn request_id(&self) -> &str {
                &self.request_id
            }
        }
    )*};
}

open_requests!(UserRegisterReq, UserLoginReq, PhoneVerifyCodeReq, PhoneRegisterReq, PhoneLoginReq, GetMultiUserInfoReq,);

/// Internal only: the caller is the service-set `user_id`.
impl Envelope for DeleteFilesReq {
    fn request_id(&self) -> &str {
        &self.request_id
    }
    fn set_user_id(&mut self, user_id: String) {
        self.user_id = Some(user_id);
    }
    fn user_id(&self) -> &str {
        self.user_id.as_deref().unwrap_or("")
    }
}

macro_rules! session_requests {
    ($($t:ident $({ $($internal:ident),* })?),* $(,)?) => {$(
        impl Envelope for $t {
            fn request_id(&self) -> &str {
                &self.request_id
            }
            fn session_id(&self) -> Option<&str> {
                Some(self.session_id.as_deref().unwrap_or(""))
            }
            fn set_user_id(&mut self, user_id: String) {
                self.user_id = Some(user_id);
            }
            fn user_id(&self) -> &str {
                self.user_id.as_deref().unwrap_or("")
            }
            fn clear_internal(&mut self) {
                $($(self.$internal = None;)*)?
            }
        }
    )*};
}

session_requests!(
    GetUserInfoReq,
    SetUserAvatarReq,
    SetUserNicknameReq,
    SetUserDescriptionReq,
    SetUserPhoneNumberReq,
    GetFriendListReq,
    FriendRemoveReq,
    FriendAddReq,
    FriendAddProcessReq,
    GetPendingFriendEventListReq,
    FriendSearchReq,
    GetChatSessionListReq,
    ChatSessionCreateReq,
    GetChatSessionMemberReq,
    GetSingleFileReq,
    GetMultiFileReq,
    PutSingleFileReq { access },
    PutMultiFileReq { access },
    GetHistoryMsgReq,
    GetRecentMsgReq,
    MsgSearchReq,
    NewMessageReq,
    SpeechRecognitionReq,
    UserLogoutReq,
);

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn failure_sets_field_three() {
        let rsp = GetUserInfoRsp::failure("r1".into(), "nope");
        assert!(!rsp.success());
        let bytes = rsp.encode_to_vec();
        // field 3, wire type 2 ("errormsg"/"errmsg" share the number), length 4, "nope"
        assert!(bytes.windows(6).any(|w| w == [0x1a, 4, b'n', b'o', b'p', b'e']));
    }

    #[test]
    fn session_requests_take_user_id_from_gateway() {
        let mut req = PutSingleFileReq {
            user_id: Some("spoofed".into()),
            access: Some(FileAccess { chat_session_id: None, public_read: true }),
            ..Default::default()
        };
        req.set_user_id("real".into());
        req.clear_internal();
        assert_eq!(req.user_id(), "real");
        assert!(req.access.is_none());
    }
}
