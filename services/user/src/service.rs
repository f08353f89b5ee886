//! `UserService`: features 1-10 of the seed and the internal `GetMultiUserInfo`.

use std::collections::HashMap;
use std::sync::Arc;

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use chatmesh_common::grpc::{GrpcChannel, expect_success, reply};
use chatmesh_common::search::{SearchIndex, UserDoc};
use chatmesh_common::{ExpiringStore, LoginSessions};
use chatmesh_proto::file_service_client::FileServiceClient;
use chatmesh_proto::user_service_server::UserService;
use chatmesh_proto::*;
use tonic::{Request, Response, Status};

use crate::codes::VerifyCodes;
use crate::error::UserError;
use crate::rules;
use crate::store::{UserRow, UserStore};

/// Failed logins per nickname before further attempts are refused for a while.
const MAX_FAILED_LOGINS: i64 = 10;
const FAILED_LOGIN_WINDOW: std::time::Duration = std::time::Duration::from_secs(900);

pub struct Users {
    pub store: UserStore,
    pub sessions: LoginSessions,
    pub codes: VerifyCodes,
    pub limits: Arc<dyn ExpiringStore>,
    pub files: FileServiceClient<GrpcChannel>,
    pub index: Arc<dyn SearchIndex>,
    pub max_avatar_bytes: usize,
}

type Rpc<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl UserService for Users {
    async fn user_register(&self, req: Request<UserRegisterReq>) -> Rpc<UserRegisterRsp> {
        let req = req.into_inner();
        reply(req.request_id.clone(), self.register(req).await)
    }

    async fn user_login(&self, req: Request<UserLoginReq>) -> Rpc<UserLoginRsp> {
        let req = req.into_inner();
        reply(req.request_id.clone(), self.login(req).await)
    }

    async fn get_phone_verify_code(&self, req: Request<PhoneVerifyCodeReq>) -> Rpc<PhoneVerifyCodeRsp> {
        let req = req.into_inner();
        let result = async {
            if !rules::phone_ok(&req.phone_number) {
                return Err(UserError::InvalidPhone);
            }
            let verify_code_id = self.codes.issue(&req.phone_number).await?;
            Ok(PhoneVerifyCodeRsp { verify_code_id, ..Default::default() })
        };
        reply(req.request_id.clone(), result.await)
    }

    async fn phone_register(&self, req: Request<PhoneRegisterReq>) -> Rpc<PhoneRegisterRsp> {
        let req = req.into_inner();
        reply(req.request_id.clone(), self.phone_register(req).await)
    }

    async fn phone_login(&self, req: Request<PhoneLoginReq>) -> Rpc<PhoneLoginRsp> {
        let req = req.into_inner();
        let result = async {
            let phone = &req.phone_number;
            if !rules::phone_ok(phone) {
                return Err(UserError::InvalidPhone);
            }
            let user = self.store.by_phone(phone).await?.ok_or(UserError::PhoneNotRegistered)?;
            self.codes.redeem(&req.verify_code_id, phone, &req.verify_code).await?;
            let login_session_id = self.sessions.create(&user.user_id).await?;
            Ok(PhoneLoginRsp { login_session_id, ..Default::default() })
        };
        reply(req.request_id.clone(), result.await)
    }

    async fn get_user_info(&self, req: Request<GetUserInfoReq>) -> Rpc<GetUserInfoRsp> {
        let req = req.into_inner();
        let result = async {
            let caller = caller(&req)?;
            let user = self.store.by_id(caller).await?.ok_or_else(|| UserError::UnknownUser(caller.into()))?;
            let mut infos = self.with_avatars(vec![user]).await?;
            Ok::<_, UserError>(GetUserInfoRsp { user_info: infos.pop(), ..Default::default() })
        };
        reply(req.request_id.clone(), result.await)
    }

    async fn get_multi_user_info(&self, req: Request<GetMultiUserInfoReq>) -> Rpc<GetMultiUserInfoRsp> {
        let req = req.into_inner();
        let result = async {
            let mut ids = req.users_id.clone();
            ids.sort();
            ids.dedup();
            let rows = self.store.by_ids(&ids).await?;
            if let Some(missing) = ids.iter().find(|id| !rows.iter().any(|r| &r.user_id == *id)) {
                return Err(UserError::UnknownUser(missing.clone()));
            }
            let users_info = self.with_avatars(rows).await?.into_iter().map(|u| (u.user_id.clone(), u)).collect();
            Ok(GetMultiUserInfoRsp { users_info, ..Default::default() })
        };
        reply(req.request_id.clone(), result.await)
    }

    async fn set_user_avatar(&self, req: Request<SetUserAvatarReq>) -> Rpc<SetUserAvatarRsp> {
        let req = req.into_inner();
        let result = async {
            let caller = caller(&req)?;
            if req.avatar.is_empty() {
                return Err(UserError::AvatarEmpty);
            }
            if req.avatar.len() > self.max_avatar_bytes {
                return Err(UserError::AvatarTooLarge(self.max_avatar_bytes));
            }
            self.store.by_id(caller).await?.ok_or_else(|| UserError::UnknownUser(caller.into()))?;
            let put = PutSingleFileReq {
                request_id: req.request_id.clone(),
                user_id: Some(caller.to_string()),
                file_data: Some(FileUploadData {
                    file_name: "avatar".into(),
                    file_size: req.avatar.len() as i64,
                    file_content: req.avatar.clone(),
                }),
                access: Some(FileAccess { chat_session_id: None, public_read: true }),
                ..Default::default()
            };
            let stored = expect_success(self.files.clone().put_single_file(put).await)?;
            let file_id = stored.file_info.and_then(|f| f.file_id).unwrap_or_default();
            self.store.set_avatar(caller, &file_id).await?;
            Ok(SetUserAvatarRsp::default())
        };
        reply(req.request_id.clone(), result.await)
    }

    async fn set_user_nickname(&self, req: Request<SetUserNicknameReq>) -> Rpc<SetUserNicknameRsp> {
        let req = req.into_inner();
        let result = async {
            let caller = caller(&req)?;
            if !rules::nickname_ok(&req.nickname) {
                return Err(UserError::InvalidNickname);
            }
            if !self.store.set_nickname(caller, &req.nickname).await? {
                return Err(UserError::UnknownUser(caller.into()));
            }
            self.reindex(caller).await;
            Ok(SetUserNicknameRsp::default())
        };
        reply(req.request_id.clone(), result.await)
    }

    async fn set_user_description(&self, req: Request<SetUserDescriptionReq>) -> Rpc<SetUserDescriptionRsp> {
        let req = req.into_inner();
        let result = async {
            let caller = caller(&req)?;
            if req.description.len() > rules::MAX_DESCRIPTION_BYTES {
                return Err(UserError::DescriptionTooLong(rules::MAX_DESCRIPTION_BYTES));
            }
            if !self.store.set_description(caller, &req.description).await? {
                return Err(UserError::UnknownUser(caller.into()));
            }
            self.reindex(caller).await;
            Ok(SetUserDescriptionRsp::default())
        };
        reply(req.request_id.clone(), result.await)
    }

    async fn set_user_phone_number(&self, req: Request<SetUserPhoneNumberReq>) -> Rpc<SetUserPhoneNumberRsp> {
        let req = req.into_inner();
        let result = async {
            let caller = caller(&req)?;
            let phone = &req.phone_number;
            if !rules::phone_ok(phone) {
                return Err(UserError::InvalidPhone);
            }
            let me = self.store.by_id(caller).await?.ok_or_else(|| UserError::UnknownUser(caller.into()))?;
            if self.store.by_phone(phone).await?.is_some_and(|u| u.user_id != me.user_id) {
                return Err(UserError::PhoneTaken);
            }
            // The code proves the caller holds the new number.
            self.codes.redeem(&req.phone_verify_code_id, phone, &req.phone_verify_code).await?;
            self.store.set_phone(caller, phone).await?;
            self.reindex(caller).await;
            Ok(SetUserPhoneNumberRsp::default())
        };
        reply(req.request_id.clone(), result.await)
    }
}

fn caller(req: &impl Envelope) -> Result<&str, UserError> {
    req.caller().ok_or(UserError::NoCaller)
}

impl Users {
    /// Copies the user's searchable fields to the search index. The database stays the source
    /// of truth: a failed index write is logged, and the request still succeeds.
    async fn reindex(&self, user_id: &str) {
        let result = match self.store.by_id(user_id).await {
            Ok(Some(u)) => self
                .index
                .upsert_user(&UserDoc {
                    user_id: u.user_id,
                    nickname: u.nickname,
                    phone: u.phone.unwrap_or_default(),
                    description: u.description,
                })
                .await
                .map_err(|e| e.to_string()),
            Ok(None) => Ok(()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = result {
            tracing::error!(%user_id, error = %e, "user search index is behind the database");
        }
    }

    async fn register(&self, req: UserRegisterReq) -> Result<UserRegisterRsp, UserError> {
        if !rules::nickname_ok(&req.nickname) {
            return Err(UserError::InvalidNickname);
        }
        if !rules::password_ok(&req.password) {
            return Err(UserError::InvalidPassword);
        }
        if self.store.by_nickname(&req.nickname).await?.is_some() {
            return Err(UserError::NicknameTaken);
        }
        let password_hash = hash_password(req.password).await?;
        let user_id = chatmesh_common::new_id();
        self.store
            .insert(&UserRow {
                user_id: user_id.clone(),
                nickname: req.nickname,
                password_hash: Some(password_hash),
                phone: None,
                description: String::new(),
                avatar_id: None,
            })
            .await?;
        self.reindex(&user_id).await;
        Ok(UserRegisterRsp::default())
    }

    async fn login(&self, req: UserLoginReq) -> Result<UserLoginRsp, UserError> {
        let failures = format!("login-failures:{}", req.nickname);
        let failed = self.limits.get(&failures).await?.and_then(|n| n.parse::<i64>().ok()).unwrap_or(0);
        if failed >= MAX_FAILED_LOGINS {
            return Err(UserError::TooManyLogins);
        }
        let user = self.store.by_nickname(&req.nickname).await?;
        let hash = user.as_ref().and_then(|u| u.password_hash.clone());
        // Verify even for unknown users, so timing does not reveal which nicknames exist.
        let ok = verify_password(req.password, hash).await?;
        match user {
            Some(user) if ok => {
                self.limits.del(&failures).await?;
                let login_session_id = self.sessions.create(&user.user_id).await?;
                Ok(UserLoginRsp { login_session_id, ..Default::default() })
            }
            _ => {
                self.limits.incr(&failures, FAILED_LOGIN_WINDOW).await?;
                Err(UserError::WrongCredentials)
            }
        }
    }

    async fn phone_register(&self, req: PhoneRegisterReq) -> Result<PhoneRegisterRsp, UserError> {
        let phone = &req.phone_number;
        if !rules::phone_ok(phone) {
            return Err(UserError::InvalidPhone);
        }
        if self.store.by_phone(phone).await?.is_some() {
            return Err(UserError::PhoneTaken);
        }
        self.codes.redeem(&req.verify_code_id, phone, &req.verify_code).await?;
        // The seed names phone accounts after their number; a clash with a chosen nickname
        // gets a short suffix rather than failing the registration.
        let mut nickname = phone.clone();
        if self.store.by_nickname(&nickname).await?.is_some() {
            nickname = format!("{phone}_{}", &chatmesh_common::new_id()[..6]);
        }
        let user_id = chatmesh_common::new_id();
        self.store
            .insert(&UserRow {
                user_id: user_id.clone(),
                nickname,
                password_hash: None,
                phone: Some(phone.clone()),
                description: String::new(),
                avatar_id: None,
            })
            .await?;
        self.reindex(&user_id).await;
        Ok(PhoneRegisterRsp::default())
    }

    /// Wire form of users, with avatar bytes fetched from the file service in one call.
    async fn with_avatars(&self, rows: Vec<UserRow>) -> Result<Vec<UserInfo>, UserError> {
        let mut by_file: HashMap<String, usize> = HashMap::new();
        for (i, row) in rows.iter().enumerate() {
            if let Some(id) = &row.avatar_id {
                by_file.insert(id.clone(), i);
            }
        }
        let mut infos: Vec<UserInfo> = rows
            .into_iter()
            .map(|r| UserInfo {
                user_id: r.user_id,
                nickname: r.nickname,
                description: r.description,
                phone: r.phone.unwrap_or_default(),
                avatar: Vec::new(),
            })
            .collect();
        if by_file.is_empty() {
            return Ok(infos);
        }
        // Avatars are public to logged-in users; the owner of the first one asks for all.
        let asker = infos[*by_file.values().next().expect("not empty")].user_id.clone();
        let get = GetMultiFileReq {
            request_id: chatmesh_common::new_id(),
            user_id: Some(asker),
            file_id_list: by_file.keys().cloned().collect(),
            ..Default::default()
        };
        let files = expect_success(self.files.clone().get_multi_file(get).await)?;
        for (file_id, data) in files.file_data {
            if let Some(&i) = by_file.get(&file_id) {
                infos[i].avatar = data.file_content;
            }
        }
        Ok(infos)
    }
}

async fn hash_password(password: String) -> Result<String, UserError> {
    // Argon2id costs tens of milliseconds of CPU: keep it off the async workers.
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .hash_password(password.as_bytes())
            .map(|h| h.to_string())
            .map_err(|e| UserError::Hash(e.to_string()))
    })
    .await
    .map_err(|e| UserError::Hash(e.to_string()))?
}

async fn verify_password(password: String, hash: Option<String>) -> Result<bool, UserError> {
    // A fixed dummy hash keeps the cost the same when the user or password hash is missing.
    static DUMMY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        Argon2::default().hash_password(b"not-a-password").map(|h| h.to_string()).unwrap_or_default()
    });
    tokio::task::spawn_blocking(move || {
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| DUMMY.clone());
        let parsed = PasswordHash::new(&hash).map_err(|e| UserError::Hash(e.to_string()))?;
        Ok(Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok() && known)
    })
    .await
    .map_err(|e| UserError::Hash(e.to_string()))?
}
