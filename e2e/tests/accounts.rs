//! Accounts and profiles end to end through the gateway (features 1-10 of the seed), and the
//! bad input around them. Every test runs on the standalone defaults and on MariaDB + Redis.

mod support;

use chatmesh_e2e::rid;
use chatmesh_proto::*;
use support::{Stack, refused};

both_backends!(
    register_login_and_read_profile,
    several_devices_stay_logged_in,
    phone_register_and_login,
    profile_changes,
    duplicate_nickname_and_phone_change_nothing,
    wrong_reused_and_exhausted_codes,
    code_requests_are_throttled,
    spoofed_user_id_is_overwritten,
    bad_sessions_are_refused,
    bad_bodies_are_refused,
    json_bodies_answer_in_json,
    input_rules,
    failed_logins_are_limited,
);

async fn register_login_and_read_profile(s: &Stack) {
    let (nickname, session) = s.user("alice").await;
    let me = s.client.user_info(&session).await.unwrap();
    assert_eq!(me.nickname, nickname);
    assert_eq!(me.user_id.len(), 32);
    assert!(me.phone.is_empty() && me.description.is_empty() && me.avatar.is_empty());
    let wrong = refused(s.client.login(&nickname, "not-the-password").await);
    assert!(wrong.contains("wrong"), "{wrong}");
}

async fn several_devices_stay_logged_in(s: &Stack) {
    let (nickname, first) = s.user("multi").await;
    let second = s.client.login(&nickname, "pass_word-1").await.unwrap();
    assert_ne!(first, second);
    let a = s.client.user_info(&first).await.unwrap();
    let b = s.client.user_info(&second).await.unwrap();
    assert_eq!(a.user_id, b.user_id);
}

async fn phone_register_and_login(s: &Stack) {
    let phone = "13800138001";
    let (id, code) = s.code(phone).await;
    s.client.phone_register(phone, &id, &code).await.unwrap();
    // Without a valid code nobody learns whether a phone is registered.
    let again = refused(s.client.phone_register(phone, &id, &code).await);
    assert!(again.contains("expired or unknown"), "{again}");
    // The spent registration code cannot log in; a new one can.
    let spent = refused(s.client.phone_login(phone, &id, &code).await);
    assert!(spent.contains("expired or unknown"), "{spent}");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (id, code) = s.code(phone).await;
    let session = s.client.phone_login(phone, &id, &code).await.unwrap();
    let me = s.client.user_info(&session).await.unwrap();
    assert_eq!((me.phone.as_str(), me.nickname.as_str()), (phone, phone), "phone accounts are named after the number");

    let phone2 = "13900139002";
    let (id2, code2) = s.code(phone2).await;
    let unknown = refused(s.client.phone_login(phone2, &id2, &code2).await);
    assert!(unknown.contains("not registered"), "{unknown}");
    assert_eq!(s.sms.count(), 3);
}

async fn profile_changes(s: &Stack) {
    let (old_nick, session) = s.user("prof").await;
    let new_nick = format!("renamed{}", &rid()[..6]);
    let req = SetUserNicknameReq {
        request_id: rid(),
        session_id: Some(session.clone()),
        nickname: new_nick.clone(),
        ..Default::default()
    };
    let _: SetUserNicknameRsp = s.client.ok("/service/user/set_nickname", &req).await.unwrap();
    let req = SetUserDescriptionReq {
        request_id: rid(),
        session_id: Some(session.clone()),
        description: "你好, world".into(),
        ..Default::default()
    };
    let _: SetUserDescriptionRsp = s.client.ok("/service/user/set_description", &req).await.unwrap();
    let avatar = png(64, 48);
    let req = SetUserAvatarReq {
        request_id: rid(),
        session_id: Some(session.clone()),
        avatar: avatar.clone(),
        ..Default::default()
    };
    let _: SetUserAvatarRsp = s.client.ok("/service/user/set_avatar", &req).await.unwrap();
    let phone = "18600186004";
    let (code_id, code) = s.code(phone).await;
    let set_phone = |code_id: String, code: String| SetUserPhoneNumberReq {
        request_id: rid(),
        session_id: Some(session.clone()),
        phone_number: phone.into(),
        phone_verify_code_id: code_id,
        phone_verify_code: code,
        ..Default::default()
    };
    let rsp: SetUserPhoneNumberRsp =
        s.client.call("/service/user/set_phone", &set_phone(code_id.clone(), "999999x".into())).await.unwrap();
    assert!(!rsp.success && rsp.errmsg.contains("wrong"), "{rsp:?}");
    let _: SetUserPhoneNumberRsp = s.client.ok("/service/user/set_phone", &set_phone(code_id, code)).await.unwrap();

    let me = s.client.user_info(&session).await.unwrap();
    assert_eq!(me.nickname, new_nick);
    assert_eq!(me.description, "你好, world");
    // Profiles carry a re-encoded thumbnail of the picture.
    let thumb = image::load_from_memory(&me.avatar).expect("the avatar is an image");
    assert_eq!((thumb.width(), thumb.height()), (64, 48));
    assert_eq!(me.phone, phone);
    // The renamed account logs in under its new name, by phone too; the old name is free again.
    s.client.login(&new_nick, "pass_word-1").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (id, code) = s.code(phone).await;
    let by_phone = s.client.phone_login(phone, &id, &code).await.unwrap();
    assert_eq!(s.client.user_info(&by_phone).await.unwrap().user_id, me.user_id);
    s.client.register(&old_nick, "pass_word-2").await.unwrap();

    // Limits: an empty or oversized avatar and an overlong description change nothing.
    for avatar in [Vec::new(), vec![1u8; 2 * 1024 * 1024 + 1], b"GIF89a but not really".to_vec()] {
        let req =
            SetUserAvatarReq { request_id: rid(), session_id: Some(session.clone()), avatar, ..Default::default() };
        let rsp: SetUserAvatarRsp = s.client.call("/service/user/set_avatar", &req).await.unwrap();
        assert!(!rsp.success && rsp.errormsg.contains("avatar"), "{}", rsp.errormsg);
    }
    let req = SetUserDescriptionReq {
        request_id: rid(),
        session_id: Some(session.clone()),
        description: "x".repeat(1025),
        ..Default::default()
    };
    let rsp: SetUserDescriptionRsp = s.client.call("/service/user/set_description", &req).await.unwrap();
    assert!(!rsp.success && rsp.errmsg.contains("1024"), "{}", rsp.errmsg);
    assert_eq!(s.client.user_info(&session).await.unwrap(), me);
}

async fn duplicate_nickname_and_phone_change_nothing(s: &Stack) {
    let (nickname, session) = s.user("dup").await;
    let taken = refused(s.client.register(&nickname, "other_pass1").await);
    assert!(taken.contains("taken"), "{taken}");
    // The original password still works: the refused registration changed nothing.
    s.client.login(&nickname, "pass_word-1").await.unwrap();
    assert!(refused(s.client.login(&nickname, "other_pass1").await).contains("wrong"));

    let (_, second) = s.user("dup2").await;
    let req = SetUserNicknameReq {
        request_id: rid(),
        session_id: Some(second.clone()),
        nickname: nickname.clone(),
        ..Default::default()
    };
    let rsp: SetUserNicknameRsp = s.client.call("/service/user/set_nickname", &req).await.unwrap();
    assert!(!rsp.success && rsp.errormsg.contains("taken"), "{rsp:?}");
    assert_ne!(s.client.user_info(&second).await.unwrap().nickname, nickname);

    // A phone bound to one account cannot be bound to another.
    let phone = "13700137006";
    let (id, code) = s.code(phone).await;
    s.client.phone_register(phone, &id, &code).await.unwrap();
    let other_phone_owner = s.client.user_info(&session).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (id, code) = s.code(phone).await;
    let req = SetUserPhoneNumberReq {
        request_id: rid(),
        session_id: Some(session.clone()),
        phone_number: phone.into(),
        phone_verify_code_id: id,
        phone_verify_code: code,
        ..Default::default()
    };
    let rsp: SetUserPhoneNumberRsp = s.client.call("/service/user/set_phone", &req).await.unwrap();
    assert!(!rsp.success && rsp.errmsg.contains("already"), "{rsp:?}");
    assert_eq!(s.client.user_info(&session).await.unwrap(), other_phone_owner);
}

async fn wrong_reused_and_exhausted_codes(s: &Stack) {
    let phone = "13600136007";
    let (id, code) = s.code(phone).await;
    let wrong = if code == "111111" { "222222" } else { "111111" };
    for _ in 0..4 {
        let msg = refused(s.client.phone_register(phone, &id, wrong).await);
        assert!(msg.contains("wrong"), "{msg}");
    }
    let msg = refused(s.client.phone_register(phone, &id, wrong).await);
    assert!(msg.contains("too many"), "{msg}");
    // The right code no longer works once the tries are used up; nothing was registered.
    let msg = refused(s.client.phone_register(phone, &id, &code).await);
    assert!(msg.contains("expired or unknown"), "{msg}");
    let unknown = refused(s.client.phone_register(phone, "no-such-code-id", &code).await);
    assert!(unknown.contains("expired or unknown"), "{unknown}");

    // A code sent to one phone does not register another.
    let other = "13600136008";
    let (id2, code2) = s.code(other).await;
    let msg = refused(s.client.phone_register("13600136009", &id2, &code2).await);
    assert!(msg.contains("wrong"), "{msg}");
    s.client.phone_register(other, &id2, &code2).await.unwrap();
    // Reusing it fails: the phone is now taken, and the code is spent.
    let msg = refused(s.client.phone_login(other, &id2, &code2).await);
    assert!(msg.contains("expired or unknown"), "{msg}");
}

async fn code_requests_are_throttled(s: &Stack) {
    let phone = "13500135010";
    s.client.phone_code(phone).await.unwrap();
    let msg = refused(s.client.phone_code(phone).await);
    assert!(msg.contains("was sent to this phone"), "{msg}");
    assert_eq!(s.sms.count(), 1, "the refused request sent nothing");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    s.client.phone_code(phone).await.unwrap();
    assert_eq!(s.sms.count(), 2);
    let bad = refused(s.client.phone_code("12345").await);
    assert!(bad.contains("11 digits"), "{bad}");
}

async fn spoofed_user_id_is_overwritten(s: &Stack) {
    let (_, alice) = s.user("spoofa").await;
    let (bob_nick, bob) = s.user("spoofb").await;
    let bob_id = s.client.user_info(&bob).await.unwrap().user_id;
    let req = GetUserInfoReq { request_id: rid(), session_id: Some(alice.clone()), user_id: Some(bob_id.clone()) };
    let rsp: GetUserInfoRsp = s.client.ok("/service/user/get_user_info", &req).await.unwrap();
    assert_ne!(rsp.user_info.unwrap().user_id, bob_id, "the session decides who the caller is");
    let req = SetUserDescriptionReq {
        request_id: rid(),
        session_id: Some(alice.clone()),
        user_id: Some(bob_id.clone()),
        description: "written by alice".into(),
    };
    let _: SetUserDescriptionRsp = s.client.ok("/service/user/set_description", &req).await.unwrap();
    assert_eq!(s.client.user_info(&alice).await.unwrap().description, "written by alice");
    let bob_now = s.client.user_info(&bob).await.unwrap();
    assert_eq!((bob_now.nickname.as_str(), bob_now.description.as_str()), (bob_nick.as_str(), ""));
}

async fn bad_sessions_are_refused(s: &Stack) {
    for session in [None, Some(String::new()), Some("0123456789abcdef".to_string()), Some("x".repeat(500))] {
        let req = GetUserInfoReq { request_id: "r-1".into(), session_id: session, user_id: Some("someone".into()) };
        let rsp: GetUserInfoRsp = s.client.call("/service/user/get_user_info", &req).await.unwrap();
        assert!(!rsp.success);
        assert_eq!(rsp.request_id, "r-1");
        assert!(rsp.errormsg.contains("invalid or expired"), "{}", rsp.errormsg);
        assert!(rsp.user_info.is_none());
    }
}

async fn bad_bodies_are_refused(s: &Stack) {
    let (status, body) = s
        .client
        .post_raw("/service/user/username_login", "application/x-protobuf", vec![0xff, 0xff, 0xff, 0x01])
        .await
        .unwrap();
    assert_eq!(status, 200, "errors travel in the seed's response");
    let rsp = UserLoginRsp::decode_from(&body);
    assert!(!rsp.success && rsp.errmsg.contains("bite_im.UserLoginReq"), "{rsp:?}");
    // A body of the wrong message type: fields that do not fit (field 2 as varint) are refused.
    let (_, body) =
        s.client.post_raw("/service/user/username_register", "application/x-protobuf", vec![0x10, 0x05]).await.unwrap();
    let rsp = UserRegisterRsp::decode_from(&body);
    assert!(!rsp.success, "{rsp:?}");
    // Oversized bodies are refused before decoding (this stack allows 80 MiB; see the
    // dedicated limits test for small limits).
    let (status, _) = s.client.post_raw("/service/no/such/route", "application/x-protobuf", vec![]).await.unwrap();
    assert_eq!(status, 404);
}

async fn json_bodies_answer_in_json(s: &Stack) {
    let nickname = format!("json{}", &rid()[..8]);
    let body = serde_json::json!({"request_id": "j1", "nickname": nickname, "password": "pass_word-1"});
    let (status, out) = s
        .client
        .post_raw("/service/user/username_register", "application/json", body.to_string().into_bytes())
        .await
        .unwrap();
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!((v["request_id"].as_str(), v["success"].as_bool()), (Some("j1"), Some(true)), "{v}");
    let (_, out) = s
        .client
        .post_raw("/service/user/username_login", "application/json", body.to_string().into_bytes())
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let session = v["login_session_id"].as_str().unwrap().to_string();
    assert_eq!(session.len(), 48);
    let info = serde_json::json!({"request_id": "j2", "session_id": session});
    let (_, out) = s
        .client
        .post_raw("/service/user/get_user_info", "application/json; charset=utf-8", info.to_string().into_bytes())
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["user_info"]["nickname"], nickname.as_str(), "{v}");
    // Wrong types and broken JSON get a clear error in JSON.
    let (_, out) = s
        .client
        .post_raw("/service/user/username_login", "application/json", br#"{"nickname": 42}"#.to_vec())
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["success"], false);
    assert!(v["errmsg"].as_str().unwrap().contains("not valid JSON"), "{v}");
    let (_, out) =
        s.client.post_raw("/service/user/username_login", "application/json", b"{nope".to_vec()).await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["success"], false);
}

async fn input_rules(s: &Stack) {
    // The seed's password rule without its off-by-one: a, z, 0 and 9 are fine.
    let nickname = format!("rules{}", &rid()[..8]);
    s.client.register(&nickname, "az09AZ").await.unwrap();
    s.client.login(&nickname, "az09AZ").await.unwrap();
    for (nick, pass, expect) in [
        ("", "pass_word-1", "nickname"),
        ("这是一个非常长的昵称啊", "pass_word-1", "nickname"),
        ("okname", "short", "password"),
        ("okname", "has space1", "password"),
        ("okname", "", "password"),
    ] {
        let msg = refused(s.client.register(nick, pass).await);
        assert!(msg.contains(expect), "{nick:?}/{pass:?}: {msg}");
    }
    assert!(refused(s.client.login("okname", "short").await).contains("wrong"), "nothing was registered");
}

async fn failed_logins_are_limited(s: &Stack) {
    let (nickname, _) = s.user("brute").await;
    // Five free attempts, then one per (doubling) delay.
    for _ in 0..6 {
        assert!(refused(s.client.login(&nickname, "bad_guess").await).contains("wrong"));
    }
    let msg = refused(s.client.login(&nickname, "pass_word-1").await);
    assert!(msg.contains("too many failed logins"), "{msg}");
    // A delay, not a lockout: once it passed, the owner gets in.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    s.client.login(&nickname, "pass_word-1").await.unwrap();
}

/// A real picture, as clients upload them.
fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 128]));
    let mut out = Vec::new();
    image::DynamicImage::ImageRgb8(img).write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png).unwrap();
    out
}

trait DecodeFrom: prost::Message + Default {
    fn decode_from(bytes: &[u8]) -> Self {
        Self::decode(bytes).expect("a protobuf response")
    }
}
impl<T: prost::Message + Default> DecodeFrom for T {}
