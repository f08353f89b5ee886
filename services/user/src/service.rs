//! `UserService`: features 1-10 of the seed and the internal `GetMultiUserInfo`.

use std::collections::HashMap;
use std::sync::Arc;

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use chatmesh_common::LoginSessions;
use chatmesh_common::grpc::{GrpcChannel, expect_success, reply};
use chatmesh_common::search::{SearchIndex, UserDoc};
use chatmesh_proto::file_service_client::FileServiceClient;
use chatmesh_proto::user_service_server::UserService;
use chatmesh_proto::*;
use tonic::{Request, Response, Status};

use crate::codes::VerifyCodes;
use crate::error::UserError;
use crate::limits::Limits;
use crate::pool::HeavyPool;
use crate::rules;
use crate::store::{UserRow, UserStore};

/// Most files one internal lookup asks the file service for (its per-request limit).
pub const FILE_LOOKUP_CHUNK: usize = 32;

/// gRPC metadata in which the gateway passes the client's address.
pub const CLIENT_IP_METADATA: &str = "x-chatmesh-client-ip";

pub struct Users {
    pub store: UserStore,
    pub sessions: LoginSessions,
    pub codes: VerifyCodes,
    pub limits: Limits,
    pub heavy: HeavyPool,
    pub files: FileServiceClient<GrpcChannel>,
    pub index: Arc<dyn SearchIndex>,
    pub max_avatar_bytes: usize,
    pub avatar_thumb_px: u32,
    pub avatar_thumb_bytes: usize,
}

/// The client's address as the gateway reported it (bounded: an address is short).
fn client_ip<T>(req: &Request<T>) -> Option<String> {
    let ip = req.metadata().get(CLIENT_IP_METADATA)?.to_str().ok()?;
    (ip.len() <= 64).then(|| ip.to_string())
}

type Rpc<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl UserService for Users {
    async fn user_register(&self, req: Request<UserRegisterReq>) -> Rpc<UserRegisterRsp> {
        let req = req.into_inner();
        reply(req.request_id.clone(), self.register(req).await)
    }

    async fn user_login(&self, req: Request<UserLoginReq>) -> Rpc<UserLoginRsp> {
        let ip = client_ip(&req);
        let req = req.into_inner();
        reply(req.request_id.clone(), self.login(req, ip.as_deref()).await)
    }

    async fn get_phone_verify_code(&self, req: Request<PhoneVerifyCodeReq>) -> Rpc<PhoneVerifyCodeRsp> {
        let ip = client_ip(&req);
        let req = req.into_inner();
        let result = async {
            if !rules::phone_ok(&req.phone_number) {
                return Err(UserError::InvalidPhone);
            }
            // Registered or not, every phone gets the same answer; budgets are counted first.
            self.limits.admit_sms(ip.as_deref()).await?;
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
            // The code first: only the phone's holder learns whether it is registered.
            self.codes.redeem(&req.verify_code_id, phone, &req.verify_code).await?;
            let user = self.store.by_phone(phone).await?.ok_or(UserError::PhoneNotRegistered)?;
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
            let phone = user.phone.clone().unwrap_or_default();
            let mut info = self.with_avatars(vec![user]).await?.pop();
            // Only the owner sees the phone number.
            if let Some(info) = info.as_mut() {
                info.phone = phone;
            }
            Ok::<_, UserError>(GetUserInfoRsp { user_info: info, ..Default::default() })
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
        let mut req = req.into_inner();
        let request_id = req.request_id.clone();
        let original = std::mem::take(&mut req.avatar);
        let result = async {
            let caller = caller(&req)?;
            if original.is_empty() {
                return Err(UserError::AvatarEmpty);
            }
            if original.len() > self.max_avatar_bytes {
                return Err(UserError::AvatarTooLarge(self.max_avatar_bytes));
            }
            let before = self.store.by_id(caller).await?.ok_or_else(|| UserError::UnknownUser(caller.into()))?;
            let (px, max) = (self.avatar_thumb_px, self.avatar_thumb_bytes);
            let (original, thumb) = self
                .heavy
                .run(move || {
                    let thumb = crate::avatar::thumbnail(&original, px, max)?;
                    Ok((original, thumb))
                })
                .await?;
            let file = |name: &str, content: Vec<u8>| FileUploadData {
                file_name: name.into(),
                file_size: content.len() as i64,
                file_content: content,
            };
            let put = PutMultiFileReq {
                request_id: req.request_id.clone(),
                user_id: Some(caller.to_string()),
                file_data: vec![file("avatar", original), file("avatar-thumbnail", thumb)],
                access: Some(FileAccess { chat_session_id: None, public_read: true }),
                ..Default::default()
            };
            let stored = expect_success(self.files.clone().put_multi_file(put).await)?;
            let ids: Vec<String> = stored.file_info.into_iter().filter_map(|f| f.file_id).collect();
            let [file_id, thumb_id] = ids.as_slice() else {
                return Err(UserError::Files(chatmesh_common::grpc::CallError::Refused(
                    "the file service did not store both avatar files".into(),
                )));
            };
            self.store.set_avatar(caller, file_id, thumb_id).await?;
            // The replaced avatar is deleted (best effort: a failure leaves an orphan file).
            let old: Vec<String> = [before.avatar_id, before.avatar_thumb_id].into_iter().flatten().collect();
            if !old.is_empty() {
                let del = DeleteFilesReq {
                    request_id: chatmesh_common::new_id(),
                    user_id: Some(caller.to_string()),
                    file_id_list: old,
                };
                if let Err(e) = expect_success(self.files.clone().delete_files(del).await) {
                    tracing::warn!(user_id = %caller, error = %e, "a replaced avatar was not deleted");
                }
            }
            Ok(SetUserAvatarRsp::default())
        };
        reply(request_id, result.await)
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
            // The code proves the caller holds the new number; only then is it told whether
            // the number is taken.
            self.codes.redeem(&req.phone_verify_code_id, phone, &req.phone_verify_code).await?;
            if self.store.by_phone(phone).await?.is_some_and(|u| u.user_id != me.user_id) {
                return Err(UserError::PhoneTaken);
            }
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
        let password_hash = hash_password(&self.heavy, req.password).await?;
        let user_id = chatmesh_common::new_id();
        self.store
            .insert(&UserRow {
                user_id: user_id.clone(),
                nickname: req.nickname,
                password_hash: Some(password_hash),
                phone: None,
                description: String::new(),
                avatar_id: None,
                avatar_thumb_id: None,
            })
            .await?;
        self.reindex(&user_id).await;
        Ok(UserRegisterRsp::default())
    }

    async fn login(&self, req: UserLoginReq, client_ip: Option<&str>) -> Result<UserLoginRsp, UserError> {
        // Names and passwords longer than any valid one cannot match: no counter, no hash.
        if req.nickname.len() >= 22 * 4 || req.password.len() > 64 {
            return Err(UserError::WrongCredentials);
        }
        // Counted before anything is checked, so concurrent guesses cannot slip past the limit.
        self.limits.admit_login(&req.nickname, client_ip).await?;
        let user = self.store.by_nickname(&req.nickname).await?;
        let hash = user.as_ref().and_then(|u| u.password_hash.clone());
        // Verify even for unknown users, so timing does not reveal which nicknames exist.
        let ok = verify_password(&self.heavy, req.password, hash).await?;
        match user {
            Some(user) if ok => {
                self.limits.login_succeeded(&req.nickname).await?;
                let login_session_id = self.sessions.create(&user.user_id).await?;
                Ok(UserLoginRsp { login_session_id, ..Default::default() })
            }
            _ => Err(UserError::WrongCredentials),
        }
    }

    async fn phone_register(&self, req: PhoneRegisterReq) -> Result<PhoneRegisterRsp, UserError> {
        let phone = &req.phone_number;
        if !rules::phone_ok(phone) {
            return Err(UserError::InvalidPhone);
        }
        // The code first: only the phone's holder learns whether it is registered.
        self.codes.redeem(&req.verify_code_id, phone, &req.verify_code).await?;
        if self.store.by_phone(phone).await?.is_some() {
            return Err(UserError::PhoneTaken);
        }
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
                avatar_thumb_id: None,
            })
            .await?;
        self.reindex(&user_id).await;
        Ok(PhoneRegisterRsp::default())
    }

    /// Wire form of users with their avatar thumbnails (never the originals, never the phone:
    /// callers that answer the owner add it), fetched in chunks the file service accepts.
    async fn with_avatars(&self, rows: Vec<UserRow>) -> Result<Vec<UserInfo>, UserError> {
        let mut by_file: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, row) in rows.iter().enumerate() {
            if let Some(id) = &row.avatar_thumb_id {
                by_file.entry(id.clone()).or_default().push(i);
            }
        }
        let mut infos: Vec<UserInfo> = rows
            .into_iter()
            .map(|r| UserInfo {
                user_id: r.user_id,
                nickname: r.nickname,
                description: r.description,
                phone: String::new(),
                avatar: Vec::new(),
            })
            .collect();
        let ids: Vec<String> = by_file.keys().cloned().collect();
        for chunk in ids.chunks(FILE_LOOKUP_CHUNK) {
            // Avatars are public to logged-in users; the owner of the first one asks for all.
            let asker = infos[by_file[&chunk[0]][0]].user_id.clone();
            let get = GetMultiFileReq {
                request_id: chatmesh_common::new_id(),
                user_id: Some(asker),
                file_id_list: chunk.to_vec(),
                ..Default::default()
            };
            let files = expect_success(self.files.clone().get_multi_file(get).await)?;
            for (file_id, data) in files.file_data {
                for &i in by_file.get(&file_id).into_iter().flatten() {
                    infos[i].avatar = data.file_content.clone();
                }
            }
        }
        Ok(infos)
    }
}

async fn hash_password(pool: &HeavyPool, password: String) -> Result<String, UserError> {
    // Argon2id costs tens of milliseconds of CPU and ~19 MiB: bounded, off the async workers.
    pool.run(move || {
        Argon2::default()
            .hash_password(password.as_bytes())
            .map(|h| h.to_string())
            .map_err(|e| UserError::Hash(e.to_string()))
    })
    .await
}

async fn verify_password(pool: &HeavyPool, password: String, hash: Option<String>) -> Result<bool, UserError> {
    // A fixed dummy hash keeps the cost the same when the user or password hash is missing.
    static DUMMY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        Argon2::default().hash_password(b"not-a-password").map(|h| h.to_string()).unwrap_or_default()
    });
    pool.run(move || {
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| DUMMY.clone());
        let parsed = PasswordHash::new(&hash).map_err(|e| UserError::Hash(e.to_string()))?;
        Ok(Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok() && known)
    })
    .await
}
