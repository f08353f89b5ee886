//! Hostile and heavy clients (issue 12): every input bounded, every limit atomic, pushes small.
//! Each scenario is one of the findings, tried as an attacker or a heavy user would,
//! on every backend (standalone, MariaDB with the embedded search, the real servers).

mod support;

use std::time::Duration;

use chatmesh_e2e::{ClientError, Event, noise_png, rid};
use chatmesh_proto::message_content::MsgContent;
use chatmesh_proto::*;
use prost::Message;
use support::{Stack, backends, befriend, eventually, person, refused};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(10);

async fn set_avatar(s: &Stack, session: &str, avatar: Vec<u8>) -> SetUserAvatarRsp {
    let req = SetUserAvatarReq { request_id: rid(), session_id: Some(session.into()), avatar, ..Default::default() };
    s.client.call("/service/user/set_avatar", &req).await.unwrap()
}

// ---- Finding 1: avatar bytes travel in every message ----------------------------------------

async fn pushes_and_histories_carry_thumbnails_not_avatars(s: &Stack) {
    let a = person(s, "av").await;
    let b = person(s, "avb").await;
    let big = noise_png(800, 800);
    assert!(big.len() > 1_800_000, "{}", big.len());
    let rsp = set_avatar(s, &a.session, big).await;
    assert!(rsp.success, "{}", rsp.errormsg);
    let not_image = set_avatar(s, &a.session, b"<html>definitely not a picture</html>".to_vec()).await;
    assert!(
        !not_image.success && not_image.errormsg.contains("not a PNG, JPEG, GIF or WebP"),
        "{}",
        not_image.errormsg
    );

    let me = s.client.user_info(&a.session).await.unwrap();
    assert!(!me.avatar.is_empty() && me.avatar.len() <= 32 * 1024, "thumbnail of {} bytes", me.avatar.len());
    let thumb = image::load_from_memory(&me.avatar).unwrap();
    assert!(thumb.width() <= 128 && thumb.height() <= 128);

    let chat = befriend(&s.client, &a, &b).await;
    let mut wb = s.client.notifications("/", &b.session).await.unwrap();
    for i in 0..20 {
        s.client.send_text(&a.session, &chat, &format!("hi {i}")).await.unwrap();
    }
    for _ in 0..20 {
        let Event::Notify(n) = wb.next(WAIT).await else { panic!("no push") };
        let wire = n.encoded_len();
        assert!(wire < 40 * 1024, "a push of 'hi' took {wire} bytes");
        let Some(notify_message::NotifyRemarks::NewMessageInfo(m)) = n.notify_remarks else { panic!() };
        assert_eq!(m.message_info.unwrap().sender.unwrap().avatar, me.avatar, "pushes carry the thumbnail");
    }
    let history = eventually("20 stored messages", || async {
        Some(s.client.recent(&b.session, &chat, 20).await.unwrap()).filter(|h| h.len() == 20)
    })
    .await;
    let size: usize = history.iter().map(Message::encoded_len).sum();
    assert!(size < 20 * 40 * 1024, "20 short texts took {size} bytes");
    assert!(history.iter().all(|m| m.sender.as_ref().unwrap().avatar == me.avatar));
    let members = s.client.friends(&b.session).await.unwrap();
    assert_eq!(members[0].avatar, me.avatar);
}

// ---- Findings 2, 8, 12: limits that race; lockouts strangers can trigger --------------------

async fn concurrent_guesses_cannot_beat_the_login_limit(s: &Stack) {
    let (nickname, _) = s.user("race").await;
    let attempts = (0..40).map(|i| {
        let client = s.client.clone();
        let nickname = nickname.clone();
        // The right password as the 26th attempt.
        let password = if i == 25 { "pass_word-1" } else { "wrong_guess" };
        tokio::spawn(async move { client.login(&nickname, password).await })
    });
    let mut evaluated = 0;
    let mut delayed = 0;
    for attempt in attempts.collect::<Vec<_>>() {
        // Arrival order is the server's: the right password may be among the evaluated ones.
        match attempt.await.unwrap() {
            Ok(_) => evaluated += 1,
            Err(ClientError::Refused(m)) if m.contains("wrong") => evaluated += 1,
            Err(ClientError::Refused(m)) if m.contains("too many failed logins") || m.contains("busy") => delayed += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(evaluated <= 6, "{evaluated} guesses were evaluated (5 free + 1 per delay)");
    assert!(delayed >= 33, "{delayed} attempts were held back");
    // Strangers slow an account down; they cannot lock its owner out for long.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut owner = None;
    for _ in 0..40 {
        match s.client.login(&nickname, "pass_word-1").await {
            Ok(session) => {
                owner = Some(session);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
    assert!(owner.is_some(), "the owner got in once the delay passed");
    // An absurd nickname is refused without being stored as a counter key.
    let huge = "n".repeat(1 << 20);
    let (status, _) = s
        .client
        .post_raw("/service/user/username_login", "application/x-protobuf", {
            UserLoginReq { request_id: rid(), nickname: huge, password: "x".into(), ..Default::default() }
                .encode_to_vec()
        })
        .await
        .unwrap();
    assert_eq!(status, 200);
}

async fn concurrent_code_guesses_cannot_beat_the_tries(s: &Stack) {
    let phone = "13500135012";
    let (id, code) = s.code(phone).await;
    let wrong = if code == "000000" { "000001" } else { "000000" };
    let guesses = (0..40).map(|i| {
        let (client, id) = (s.client.clone(), id.clone());
        let guess = if i == 25 { code.clone() } else { wrong.to_string() };
        tokio::spawn(async move { client.phone_register(phone, &id, &guess).await })
    });
    let mut evaluated = 0;
    for g in guesses.collect::<Vec<_>>() {
        match g.await.unwrap() {
            Ok(()) => evaluated += 1,
            Err(ClientError::Refused(m)) if m.contains("is wrong") => evaluated += 1,
            Err(_) => {}
        }
    }
    assert!(evaluated <= 5, "{evaluated} codes were compared; five tries allowed");
}

// ---- Finding 5: the 32-file limit hit internal lookups -------------------------------------

async fn big_groups_and_many_images_still_load(s: &Stack) {
    let owner = person(s, "own").await;
    let small = noise_png(40, 40);
    set_avatar(s, &owner.session, small.clone()).await;
    let mut members = vec![owner.id.clone()];
    for i in 0..33 {
        let p = person(s, &format!("m{i}_")).await;
        assert!(set_avatar(s, &p.session, small.clone()).await.success);
        befriend(&s.client, &owner, &p).await;
        members.push(p.id);
    }
    s.client.create_group(&owner.session, "thirty-four", &members).await.unwrap();
    let group = s.client.chat_sessions(&owner.session).await.unwrap();
    let group = group.into_iter().find(|g| g.chat_session_name == "thirty-four").unwrap().chat_session_id;
    let listed = s.client.members(&owner.session, &group).await.unwrap();
    assert_eq!(listed.len(), 34);
    assert!(listed.iter().all(|m| !m.avatar.is_empty()), "every member's avatar is there");
    for i in 0..33u8 {
        let image = MessageContent {
            message_type: MessageType::Image as i32,
            msg_content: Some(MsgContent::ImageMessage(ImageMessageInfo {
                file_id: None,
                image_content: Some(vec![i; 1000]),
            })),
        };
        s.client.send(&owner.session, &group, image).await.unwrap();
    }
    let recent = eventually("33 stored images", || async {
        Some(s.client.recent(&owner.session, &group, 40).await.unwrap()).filter(|r| r.len() >= 33)
    })
    .await;
    assert_eq!(recent.len(), 33);
    assert!(recent.iter().all(|m| match m.message.as_ref().and_then(|c| c.msg_content.as_ref()) {
        Some(MsgContent::ImageMessage(i)) => i.image_content.as_ref().is_some_and(|b| b.len() == 1000),
        _ => false,
    }));
    let history = s.client.history(&owner.session, &group, 0, i64::MAX / 2).await.unwrap();
    assert_eq!(history.len(), 33);
}

// ---- Finding 9: privacy and abuse -----------------------------------------------------------

async fn phones_stay_private_and_strangers_cannot_group_anyone(s: &Stack) {
    let a = person(s, "pa").await;
    let victim = person(s, "pv").await;
    let phone = "13300133099";
    let (id, code) = s.code(phone).await;
    let req = SetUserPhoneNumberReq {
        request_id: rid(),
        session_id: Some(victim.session.clone()),
        phone_number: phone.into(),
        phone_verify_code_id: id,
        phone_verify_code: code,
        ..Default::default()
    };
    let _: SetUserPhoneNumberRsp = s.client.ok("/service/user/set_phone", &req).await.unwrap();
    assert!(s.client.search(&a.session, "1330013").await.unwrap().is_empty(), "no phone substrings");
    let found = s.client.search(&a.session, phone).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!((found[0].user_id.as_str(), found[0].phone.as_str()), (victim.id.as_str(), ""));
    // Nickname search works on every backend, metacharacters literal (MariaDB + embedded
    // search failed here with error 1064).
    let nick = s.client.user_info(&victim.session).await.unwrap().nickname;
    let found = s.client.search(&a.session, &nick[..4]).await.unwrap();
    assert!(found.iter().any(|u| u.user_id == victim.id));
    // Literal: a match names the character. (Not "no match": against a shared deployment, such
    // as the kind cluster's, other tests' users may have it, e.g. `m{i}_` above.)
    for meta in ["%", "_", "!", "\\", "'"] {
        let found = s.client.search(&a.session, meta).await.unwrap();
        assert!(found.iter().all(|u| u.nickname.contains(meta)), "{meta}: {found:?}");
    }

    // Without a valid code, registered and unregistered phones get the same answer.
    let registered = refused(s.client.phone_login(phone, "made-up-code-id", "123456").await);
    let unregistered = refused(s.client.phone_login("13300133098", "made-up-code-id", "123456").await);
    assert_eq!(registered, unregistered);
    let registered = refused(s.client.phone_register(phone, "made-up-code-id", "123456").await);
    let unregistered = refused(s.client.phone_register("13300133098", "made-up-code-id", "123456").await);
    assert_eq!(registered, unregistered);

    // Nobody is put in a group by a stranger.
    let msg = refused(s.client.create_group(&a.session, "trap", &[a.id.clone(), victim.id.clone()]).await);
    assert!(msg.contains("not your friend"), "{msg}");
    assert!(s.client.chat_sessions(&victim.session).await.unwrap().is_empty());
}

// ---- Finding 10 runs in every scenario above on MariaDB + embedded search ------------------
// ---- Finding 11: sessions ------------------------------------------------------------------

async fn logout_ends_the_session(s: &Stack) {
    let (_, session) = s.user("bye").await;
    let (_, other) = s.user("stay").await;
    let req = UserLogoutReq { request_id: rid(), session_id: Some(session.clone()), ..Default::default() };
    let rsp: UserLogoutRsp = s.client.ok("/service/user/logout", &req).await.unwrap();
    assert_eq!(rsp.request_id, req.request_id);
    let err = s.client.user_info(&session).await.unwrap_err().to_string();
    assert!(err.contains("invalid or expired"), "{err}");
    let again: UserLogoutRsp = s.client.call("/service/user/logout", &req).await.unwrap();
    assert!(!again.success && again.errmsg.contains("invalid or expired"), "{}", again.errmsg);
    s.client.user_info(&other).await.unwrap();
}

all_backends!(
    pushes_and_histories_carry_thumbnails_not_avatars,
    concurrent_guesses_cannot_beat_the_login_limit,
    concurrent_code_guesses_cannot_beat_the_tries,
    big_groups_and_many_images_still_load,
    phones_stay_private_and_strangers_cannot_group_anyone,
    logout_ends_the_session,
);

// ---- Scenarios with their own limits, on each backend in turn ------------------------------

/// Finding 3: at most the configured number of hashes run; the excess is told to retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_hashing_is_bounded() {
    for backend in backends() {
        let Some(s) = Stack::start_with(backend, &["--heavy-workers=1", "--heavy-queue=1"]).await else { continue };
        let tries = (0..30).map(|i| {
            let client = s.client.clone();
            tokio::spawn(async move { client.login(&format!("ghost{i}"), "whatever1").await })
        });
        let (mut busy, mut wrong) = (0, 0);
        for t in tries.collect::<Vec<_>>() {
            match t.await.unwrap() {
                Err(ClientError::Refused(m)) if m.contains("busy") => busy += 1,
                Err(ClientError::Refused(m)) if m.contains("wrong") => wrong += 1,
                other => panic!("{other:?}"),
            }
        }
        assert!(busy > 0 && wrong > 0, "busy {busy}, wrong {wrong}");
        s.stop().await;
    }
}

/// Finding 6: a repeated id is read once; one response has a byte cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_file_reads_are_deduplicated_and_capped() {
    for backend in backends() {
        let Some(s) = Stack::start_with(backend, &["--max-file-response-bytes=2500000"]).await else { continue };
        let (_, me) = s.user("mf").await;
        let mut ids = Vec::new();
        for i in 0..3u8 {
            ids.push(s.client.put_file(&me, "blob", vec![i; 1_000_000]).await.unwrap());
        }
        let get = |file_id_list: Vec<String>| GetMultiFileReq {
            request_id: rid(),
            session_id: Some(me.clone()),
            file_id_list,
            ..Default::default()
        };
        let same: GetMultiFileRsp =
            s.client.ok("/service/file/get_multi_file", &get(vec![ids[0].clone(); 32])).await.unwrap();
        assert_eq!(same.file_data.len(), 1);
        let rsp: GetMultiFileRsp = s.client.call("/service/file/get_multi_file", &get(ids.clone())).await.unwrap();
        assert!(!rsp.success && rsp.errmsg.contains("ask for fewer"), "{}", rsp.errmsg);
        s.stop().await;
    }
}

/// Finding 7: small bodies where nothing big travels; a bad session is refused before a big
/// body is read; connections that dribble or idle are closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_are_bounded_and_slow_connections_closed() {
    for backend in backends() {
        let flags = ["--header-read-timeout=2s", "--idle-timeout=3s"];
        let Some(s) = Stack::start_with(backend, &flags).await else { continue };
        let (_, me) = s.user("body").await;
        let req = SetUserDescriptionReq {
            request_id: rid(),
            session_id: Some(me.clone()),
            description: "x".repeat(100_000),
            ..Default::default()
        };
        let rsp: SetUserDescriptionRsp = s.client.call("/service/user/set_description", &req).await.unwrap();
        assert!(!rsp.success && rsp.errmsg.contains("larger than 65536"), "{}", rsp.errmsg);

        // 50 MB announced, a bad session in the first bytes, then nothing: answered at once.
        let addr = s.http.trim_start_matches("http://").to_string();
        let head = PutSingleFileReq { request_id: rid(), session_id: Some("forged".into()), ..Default::default() };
        let mut prefix = head.encode_to_vec();
        prefix.extend_from_slice(&[0x22, 0x80, 0xe1, 0xeb, 0x17]); // field 4, 50,000,000 bytes follow
        let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let request = format!(
            "POST /service/file/put_single_file HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n\
             Content-Length: {}\r\n\r\n",
            prefix.len() + 50_000_000
        );
        tcp.write_all(request.as_bytes()).await.unwrap();
        tcp.write_all(&prefix).await.unwrap();
        let mut answer = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(1), tcp.read(&mut answer))
            .await
            .expect("the bad session is refused before the body arrives")
            .unwrap();
        let body = &answer[..n];
        assert!(body.windows(18).any(|w| w == b"invalid or expired"), "{}", String::from_utf8_lossy(body));

        // A live session first (the early check resolves it), then the field again: the decoded
        // request carries the last one, and that one is what is judged.
        let live = PutSingleFileReq { request_id: rid(), session_id: Some(me.clone()), ..Default::default() };
        let mut body = live.encode_to_vec();
        body.extend(PutSingleFileReq { session_id: Some("forged".into()), ..Default::default() }.encode_to_vec());
        let (status, answer) =
            s.client.post_raw("/service/file/put_single_file", "application/x-protobuf", body).await.unwrap();
        let rsp = PutSingleFileRsp::decode(answer.as_slice()).unwrap();
        assert!(status == 200 && !rsp.success && rsp.errmsg.contains("invalid or expired"), "{status} {}", rsp.errmsg);

        // Headers dribbled one line at a time, and a connection that says nothing: closed.
        for dribble in [true, false] {
            let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let started = std::time::Instant::now();
            if dribble {
                tcp.write_all(b"POST /service/user/get_user_info HTTP/1.1\r\n").await.unwrap();
            }
            let closed = async {
                let mut buf = [0u8; 64];
                loop {
                    if dribble {
                        let _ = tcp.write_all(b"X-Slow: 1\r\n").await;
                    }
                    match tokio::time::timeout(Duration::from_millis(500), tcp.read(&mut buf)).await {
                        Ok(Ok(0)) | Ok(Err(_)) => return,
                        _ => {}
                    }
                }
            };
            tokio::time::timeout(Duration::from_secs(8), closed).await.expect("the server closed the connection");
            assert!(started.elapsed() >= Duration::from_millis(1500));
        }
        s.stop().await;
    }
}

/// Finding 4: a socket that does not read is closed (its messages stay in history); pings and
/// session checks do not wait for it; the oldest device goes past the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_websockets_are_closed_and_devices_capped() {
    for backend in backends() {
        let flags = ["--ws-queue-bytes=200000", "--ws-send-timeout=2s", "--ws-max-devices=2"];
        let Some(s) = Stack::start_with(backend, &flags).await else { continue };
        let a = person(&s, "wa").await;
        let b = person(&s, "wb").await;
        let chat = befriend(&s.client, &a, &b).await;
        let mut stuck = s.client.notifications("/", &b.session).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let text = "y".repeat(60_000);
        for _ in 0..150 {
            s.client.send_text(&a.session, &chat, &text).await.unwrap();
        }
        // The socket was closed: reading now finds fewer than all pushes, then the end.
        let mut received = 0;
        loop {
            match stuck.next(WAIT).await {
                Event::Notify(_) => received += 1,
                Event::Closed(_) => break,
                Event::Quiet => panic!("the slow socket was not closed ({received} pushes read)"),
            }
        }
        assert!(received < 150, "all {received} pushes were kept for a socket that did not read");
        // Nothing is lost: the history has every message (once the storage service wrote them).
        eventually("150 stored messages", || async {
            Some(s.client.recent(&b.session, &chat, 150).await.unwrap()).filter(|r| r.len() == 150)
        })
        .await;

        let mut first = s.client.notifications("/", &b.session).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _second = s.client.notifications("/", &b.session).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _third = s.client.notifications("/", &b.session).await.unwrap();
        match first.next(WAIT).await {
            Event::Closed(Some((code, _))) => assert_eq!(code, 4009),
            other => panic!("the oldest device was not closed: {other:?}"),
        }
        s.stop().await;
    }
}

/// Finding 9: SMS budgets per address; a per-user storage quota; replaced avatars deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sms_budgets_and_storage_quota() {
    for backend in backends() {
        let flags = ["--sms-per-ip=3", "--storage-quota-bytes=200000"];
        let Some(s) = Stack::start_with(backend, &flags).await else { continue };
        for i in 0..3 {
            s.client.phone_code(&format!("1320013200{i}")).await.unwrap();
        }
        let msg = refused(s.client.phone_code("13200132009").await);
        assert!(msg.contains("too many requests from this address"), "{msg}");
        assert_eq!(s.sms.count(), 3);
        let (_, me) = s.user("quota").await;
        // Replaced avatars are deleted: changing one's picture does not use up the quota.
        for _ in 0..4 {
            let rsp = set_avatar(&s, &me, noise_png(150, 150)).await;
            assert!(rsp.success, "{}", rsp.errormsg);
        }
        s.client.put_file(&me, "a", vec![1; 60_000]).await.unwrap();
        let msg = refused(s.client.put_file(&me, "b", vec![1; 60_000]).await);
        assert!(msg.contains("quota"), "{msg}");
        s.stop().await;
    }
}

/// Finding 11: a session ends at its absolute lifetime, however busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_end_at_their_max_age() {
    for backend in backends() {
        let Some(s) = Stack::start_with(backend, &["--session-max-age=4s"]).await else { continue };
        let (_, session) = s.user("old").await;
        let born = std::time::Instant::now(); // the session is at least this old
        // In use all along (each use renews the idle timeout); timed from login, not by a
        // count of calls, so a slow machine does not run past the max age here...
        while born.elapsed() < Duration::from_secs(1) {
            s.client.user_info(&session).await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // ... and it ends at its max age all the same.
        tokio::time::sleep(Duration::from_millis(4500).saturating_sub(born.elapsed())).await;
        let err = s.client.user_info(&session).await.unwrap_err().to_string();
        assert!(err.contains("invalid or expired"), "{err}");
        s.stop().await;
    }
}
