//! Who may call what: one table, evaluated in one place, default deny. The gateway is the only
//! caller of user-facing RPCs (they carry a caller id it resolved from a login session); the
//! services behind it may call only the few internal lookups their work needs.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::codegen::http;

use super::Peer;
use super::Service::{self, *};

/// Every internal RPC (`/package.Service/Method`) and the services allowed to call it.
/// An RPC missing here is refused to everyone.
pub const TABLE: &[(&str, &[Service])] = &[
    ("/bite_im.UserService/UserRegister", &[Gateway]),
    ("/bite_im.UserService/UserLogin", &[Gateway]),
    ("/bite_im.UserService/GetPhoneVerifyCode", &[Gateway]),
    ("/bite_im.UserService/PhoneRegister", &[Gateway]),
    ("/bite_im.UserService/PhoneLogin", &[Gateway]),
    ("/bite_im.UserService/GetUserInfo", &[Gateway]),
    // Profiles of message senders, friends and members.
    ("/bite_im.UserService/GetMultiUserInfo", &[Gateway, Friend, Message, Transmit]),
    ("/bite_im.UserService/SetUserAvatar", &[Gateway]),
    ("/bite_im.UserService/SetUserNickname", &[Gateway]),
    ("/bite_im.UserService/SetUserDescription", &[Gateway]),
    ("/bite_im.UserService/SetUserPhoneNumber", &[Gateway]),
    ("/bite_im.FileService/GetSingleFile", &[Gateway]),
    // Avatars (user) and message attachments (message).
    ("/bite_im.FileService/GetMultiFile", &[Gateway, User, Message]),
    // Avatars (user) and message attachments (transmit).
    ("/bite_im.FileService/PutSingleFile", &[Gateway, User, Transmit]),
    // An avatar and its thumbnail (user), stored together.
    ("/bite_im.FileService/PutMultiFile", &[Gateway, User]),
    // A replaced avatar (user); internal only.
    ("/bite_im.FileService/DeleteFiles", &[User]),
    ("/bite_im.FriendService/GetFriendList", &[Gateway]),
    ("/bite_im.FriendService/FriendRemove", &[Gateway]),
    ("/bite_im.FriendService/FriendAdd", &[Gateway]),
    ("/bite_im.FriendService/FriendAddProcess", &[Gateway]),
    ("/bite_im.FriendService/FriendSearch", &[Gateway]),
    ("/bite_im.FriendService/GetChatSessionList", &[Gateway]),
    ("/bite_im.FriendService/ChatSessionCreate", &[Gateway]),
    ("/bite_im.FriendService/GetChatSessionMember", &[Gateway]),
    ("/bite_im.FriendService/GetPendingFriendEventList", &[Gateway]),
    ("/bite_im.MsgTransmitService/GetTransmitTarget", &[Gateway]),
    ("/bite_im.MsgStorageService/GetHistoryMsg", &[Gateway]),
    ("/bite_im.MsgStorageService/GetRecentMsg", &[Gateway]),
    ("/bite_im.MsgStorageService/MsgSearch", &[Gateway]),
    ("/bite_im.SpeechService/SpeechRecognition", &[Gateway]),
];

/// A right that a field inside a request asks for, beyond calling the RPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// A stored file readable by every member of a chat session (a message attachment).
    ChatAttachment,
    /// A stored file readable by any logged-in user (an avatar).
    PublicFile,
}

impl Grant {
    fn allowed(self) -> &'static [Service] {
        match self {
            Grant::ChatAttachment => &[Transmit],
            Grant::PublicFile => &[User],
        }
    }
}

/// Whether `peer` may call the RPC at `path`.
pub fn may_call(path: &str, peer: &Peer) -> bool {
    TABLE
        .iter()
        .find(|(rpc, _)| *rpc == path)
        .is_some_and(|(_, allowed)| peer.services.iter().any(|s| allowed.contains(s)))
}

/// Whether the request's peer may ask for `grant`. Without the mesh (no peer: loopback only)
/// the deployment is the boundary and every caller may.
pub fn may_grant(peer: Option<&Peer>, grant: Grant) -> Result<(), tonic::Status> {
    match peer {
        Some(peer) if !peer.services.iter().any(|s| grant.allowed().contains(s)) => {
            refused("grant", &format!("{grant:?}"), peer);
            Err(tonic::Status::permission_denied(format!("{peer} may not ask for {grant:?}")))
        }
        _ => Ok(()),
    }
}

fn refused(kind: &'static str, what: &str, peer: &Peer) {
    let caller = peer.services.iter().map(|s| s.name()).collect::<Vec<_>>().join("+");
    tracing::warn!(%peer, %what, "internal call refused: not allowed by the authorization table");
    metrics::counter!("chatmesh_mesh_refused_total", "kind" => kind, "what" => what.to_string(), "caller" => caller)
        .increment(1);
}

/// Applies [`TABLE`] to every request of a gRPC server whose connections carry a [`Peer`]
/// (the mesh's TLS listener). With `enforce` off (no mesh) requests pass untouched.
#[derive(Debug, Clone, Copy)]
pub struct AuthorizeLayer {
    pub enforce: bool,
}

impl<S> tower::Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Authorize { inner, enforce: self.enforce }
    }
}

#[derive(Debug, Clone)]
pub struct Authorize<S> {
    inner: S,
    enforce: bool,
}

type Body = tonic::body::Body;

impl<S, B> tower::Service<http::Request<B>> for Authorize<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if self.enforce
            && let Err(status) = check(&request)
        {
            return Box::pin(std::future::ready(Ok(status.into_http())));
        }
        Box::pin(self.inner.call(request))
    }
}

fn check<B>(request: &http::Request<B>) -> Result<(), tonic::Status> {
    authorize(request.uri().path(), request.extensions().get::<Peer>())
}

/// [`TABLE`]'s answer for a call of the RPC at `path` by `peer` (none: no client certificate),
/// counted and logged when refused.
pub fn authorize(path: &str, peer: Option<&Peer>) -> Result<(), tonic::Status> {
    let Some(peer) = peer else {
        tracing::warn!(%path, "internal call refused: no client certificate");
        metrics::counter!("chatmesh_mesh_refused_total", "kind" => "unauthenticated", "what" => path.to_string(), "caller" => "")
            .increment(1);
        return Err(tonic::Status::unauthenticated("a client certificate of this system is required"));
    };
    if may_call(path, peer) {
        Ok(())
    } else {
        refused("rpc", path, peer);
        Err(tonic::Status::permission_denied(format!("{peer} may not call {path}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(services: &[Service]) -> Peer {
        Peer { addr: None, services: services.to_vec() }
    }

    /// Every rule, tried by every service: exactly the listed ones pass.
    #[test]
    fn each_rule_allows_exactly_its_callers() {
        for (rpc, allowed) in TABLE {
            for caller in Service::ALL {
                assert_eq!(may_call(rpc, &peer(&[caller])), allowed.contains(&caller), "{caller} calling {rpc}");
            }
        }
    }

    #[test]
    fn user_facing_rpcs_are_the_gateways_alone() {
        // The calls an attacker used to act as another user.
        for rpc in [
            "/bite_im.UserService/SetUserPhoneNumber",
            "/bite_im.UserService/SetUserNickname",
            "/bite_im.MsgStorageService/GetRecentMsg",
            "/bite_im.FriendService/GetChatSessionList",
            "/bite_im.FileService/GetSingleFile",
            "/bite_im.MsgTransmitService/GetTransmitTarget",
        ] {
            assert!(may_call(rpc, &peer(&[Gateway])));
            for other in Service::ALL.into_iter().filter(|s| *s != Gateway) {
                assert!(!may_call(rpc, &peer(&[other])), "{other} may not call {rpc}");
            }
        }
    }

    #[test]
    fn unknown_rpcs_and_anonymous_certificates_are_refused() {
        assert!(!may_call("/bite_im.UserService/DropEverything", &peer(&Service::ALL)));
        assert!(!may_call("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", &peer(&[Gateway])));
        assert!(!may_call("/bite_im.UserService/GetMultiUserInfo", &peer(&[])));
    }

    #[test]
    fn grants_follow_their_services() {
        assert!(may_grant(Some(&peer(&[Transmit])), Grant::ChatAttachment).is_ok());
        assert!(may_grant(Some(&peer(&[Gateway])), Grant::ChatAttachment).is_err());
        assert!(may_grant(Some(&peer(&[User])), Grant::ChatAttachment).is_err());
        assert!(may_grant(Some(&peer(&[User])), Grant::PublicFile).is_ok());
        assert!(may_grant(Some(&peer(&[Gateway])), Grant::PublicFile).is_err());
        assert!(may_grant(None, Grant::ChatAttachment).is_ok());
    }

    /// The table covers every RPC of the protocol, so none falls to the default deny by mistake.
    #[test]
    fn table_covers_every_rpc() {
        let pool = chatmesh_proto::descriptor_pool();
        let mut rpcs: Vec<String> = pool
            .services()
            .flat_map(|s| {
                s.methods().map(|m| format!("/{}/{}", m.parent_service().full_name(), m.name())).collect::<Vec<_>>()
            })
            .collect();
        rpcs.sort();
        let mut table: Vec<String> = TABLE.iter().map(|(rpc, _)| rpc.to_string()).collect();
        table.sort();
        assert_eq!(rpcs, table);
    }
}
