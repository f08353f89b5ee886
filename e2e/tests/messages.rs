//! Messaging end to end (features 20-22 of the seed): every message type from send to push to
//! history and search, on both backends; across two gateways; through restarts of RabbitMQ and
//! of the storage service; and the checks on what may be sent and read.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use chatmesh_e2e::{Event, Notifications, rid, text_message};
use chatmesh_proto::message_content::MsgContent;
use chatmesh_proto::notify_message::NotifyRemarks;
use chatmesh_proto::*;
use support::{Backend, Stack, befriend, eventually, person, refused};

both_backends!(every_type_flows_and_is_stored, sending_and_reading_are_checked);

const WAIT: Duration = Duration::from_secs(5);

fn content(kind: MessageType, body: MsgContent) -> MessageContent {
    MessageContent { message_type: kind as i32, msg_content: Some(body) }
}

fn image(bytes: &[u8]) -> MessageContent {
    content(
        MessageType::Image,
        MsgContent::ImageMessage(ImageMessageInfo { file_id: None, image_content: Some(bytes.to_vec()) }),
    )
}

fn file(name: &str, bytes: &[u8]) -> MessageContent {
    content(
        MessageType::File,
        MsgContent::FileMessage(FileMessageInfo {
            file_id: None,
            file_size: bytes.len() as i64,
            file_name: name.into(),
            file_contents: Some(bytes.to_vec()),
        }),
    )
}

fn speech(bytes: &[u8]) -> MessageContent {
    content(
        MessageType::Speech,
        MsgContent::SpeechMessage(SpeechMessageInfo { file_id: None, file_contents: Some(bytes.to_vec()) }),
    )
}

fn pushed(n: NotifyMessage) -> MessageInfo {
    assert_eq!(n.notify_type(), NotifyType::ChatMessageNotify);
    match n.notify_remarks {
        Some(NotifyRemarks::NewMessageInfo(m)) => m.message_info.unwrap(),
        other => panic!("{other:?}"),
    }
}

fn body(m: &MessageInfo) -> &MsgContent {
    m.message.as_ref().unwrap().msg_content.as_ref().unwrap()
}

async fn quiet(ws: &mut Notifications) {
    assert_eq!(ws.next(Duration::from_millis(300)).await, Event::Quiet);
}

async fn every_type_flows_and_is_stored(s: &Stack) {
    let a = person(s, "msgA").await;
    let b = person(s, "msgB").await;
    let outsider = person(s, "msgX").await;
    let chat = befriend(&s.client, &a, &b).await;
    let a_other_device =
        s.client.login(&s.client.user_info(&a.session).await.unwrap().nickname, "pass_word-1").await.unwrap();
    let mut a_sending = s.client.notifications("/ws", &a.session).await.unwrap();
    let mut a_other = s.client.notifications("/ws", &a_other_device).await.unwrap();
    let mut b_ws = s.client.notifications("/", &b.session).await.unwrap();
    let started = chatmesh_common::unix_now();

    let picture: Vec<u8> = (0..20_000u32).map(|i| (i % 253) as u8).collect();
    let sent = [
        text_message("hello 世界, how are you?"),
        image(&picture),
        file("notes.txt", b"file body"),
        speech(&[1, 2, 3, 4, 5, 6]),
    ];
    let mut ids = Vec::new();
    for message in &sent {
        s.client.send(&a.session, &chat, message.clone()).await.unwrap();
        let to_b = pushed(b_ws.expect(NotifyType::ChatMessageNotify, WAIT).await);
        let to_a = pushed(a_other.expect(NotifyType::ChatMessageNotify, WAIT).await);
        assert_eq!(to_b, to_a, "every device sees the same message");
        assert_eq!(
            (to_b.chat_session_id.as_str(), to_b.sender.as_ref().unwrap().user_id.as_str()),
            (chat.as_str(), a.id.as_str())
        );
        assert_eq!(to_b.message.as_ref().unwrap().message_type, message.message_type);
        assert!(to_b.timestamp >= started);
        ids.push(to_b.message_id.clone());
        match (body(&to_b), message.msg_content.as_ref().unwrap()) {
            (MsgContent::StringMessage(got), MsgContent::StringMessage(want)) => assert_eq!(got, want),
            // Images are pushed with their bytes (as the seed does), files and voice by id.
            (MsgContent::ImageMessage(got), _) => {
                assert_eq!(got.image_content.as_deref(), Some(picture.as_slice()));
                assert!(got.file_id.is_some());
            }
            (MsgContent::FileMessage(got), _) => {
                assert_eq!((got.file_name.as_str(), got.file_size, got.file_contents.as_ref()), ("notes.txt", 9, None));
                // The file is readable by the session's members, and nobody else.
                let id = got.file_id.clone().unwrap();
                assert_eq!(s.client.get_file(&b.session, &id).await.unwrap(), b"file body");
                assert!(s.client.get_file(&outsider.session, &id).await.is_err());
            }
            (MsgContent::SpeechMessage(got), _) => assert!(got.file_id.is_some() && got.file_contents.is_none()),
            other => panic!("{other:?}"),
        }
    }
    quiet(&mut a_sending).await; // the sending device does not get its own messages back
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(sorted, ids, "message ids are time-ordered");

    // History: recent N and a time range, with attachment bytes filled in.
    let recent = eventually("4 stored messages", || async {
        let got = s.client.recent(&b.session, &chat, 10).await.unwrap();
        (got.len() == 4).then_some(got)
    })
    .await;
    assert_eq!(recent.iter().map(|m| m.message_id.clone()).collect::<Vec<_>>(), ids);
    assert!(
        matches!(body(&recent[1]), MsgContent::ImageMessage(i) if i.image_content.as_deref() == Some(picture.as_slice()))
    );
    assert!(
        matches!(body(&recent[2]), MsgContent::FileMessage(f) if f.file_contents.as_deref() == Some(b"file body".as_slice()))
    );
    assert!(
        matches!(body(&recent[3]), MsgContent::SpeechMessage(v) if v.file_contents.as_deref() == Some([1, 2, 3, 4, 5, 6].as_slice()))
    );
    assert_eq!(recent[0].sender.as_ref().unwrap().user_id, a.id);
    let last_two = s.client.recent(&a.session, &chat, 2).await.unwrap();
    assert_eq!(last_two.iter().map(|m| m.message_id.clone()).collect::<Vec<_>>(), ids[2..]);
    let now = chatmesh_common::unix_now();
    assert_eq!(s.client.history(&a.session, &chat, started, now + 1).await.unwrap().len(), 4);
    assert!(s.client.history(&a.session, &chat, 0, started - 10).await.unwrap().is_empty());

    // Search, Chinese and English, within the session.
    for key in ["世界", "HOW ARE", "hello"] {
        let found = eventually(key, || async {
            let got = s.client.search_messages(&b.session, &chat, key).await.unwrap();
            (!got.is_empty()).then_some(got)
        })
        .await;
        assert_eq!(found.iter().map(|m| m.message_id.clone()).collect::<Vec<_>>(), [ids[0].clone()], "{key}");
    }
    assert!(s.client.search_messages(&b.session, &chat, "absent").await.unwrap().is_empty());

    // The session list shows the last message.
    let listed = s.client.chat_sessions(&b.session).await.unwrap();
    let prev = listed[0].prev_message.as_ref().expect("prev_message");
    assert_eq!(prev.message_id, ids[3]);
}

async fn sending_and_reading_are_checked(s: &Stack) {
    let a = person(s, "chkA").await;
    let b = person(s, "chkB").await;
    let outsider = person(s, "chkX").await;
    let chat = befriend(&s.client, &a, &b).await;
    let mut b_ws = s.client.notifications("/ws", &b.session).await.unwrap();
    let not_found = refused(s.client.send_text(&outsider.session, &chat, "let me in").await);
    assert!(not_found.contains("chat session not found"), "{not_found}");
    assert_eq!(refused(s.client.send_text(&a.session, "no-such-session", "hi").await), not_found);
    let mismatched = content(MessageType::Image, MsgContent::StringMessage(StringMessageInfo { content: "x".into() }));
    let cases = [
        (text_message("   "), "text message is empty"),
        (text_message(&"x".repeat(64 * 1024 + 1)), "longer than 65536"),
        (mismatched, "does not match"),
        (MessageContent { message_type: 0, msg_content: None }, "missing"),
        (image(b""), "image is empty"),
        (file("", b"data"), "file name is empty"),
        (file("empty.bin", b""), "file is empty"),
        (speech(b""), "voice message is empty"),
    ];
    for (message, expect) in cases {
        let msg = refused(s.client.send(&a.session, &chat, message).await);
        assert!(msg.contains(expect), "{expect}: {msg}");
    }
    let req = NewMessageReq {
        request_id: rid(),
        session_id: Some(a.session.clone()),
        chat_session_id: chat.clone(),
        ..Default::default()
    };
    let rsp: NewMessageRsp = s.client.call("/service/message_transmit/new_message", &req).await.unwrap();
    assert!(!rsp.success && rsp.errormsg.contains("missing"), "{rsp:?}");
    quiet(&mut b_ws).await; // nothing refused was pushed
    // Nothing refused was stored either.
    s.client.send_text(&a.session, &chat, "the only one").await.unwrap();
    b_ws.expect(NotifyType::ChatMessageNotify, WAIT).await;
    let stored = eventually("one message", || async {
        let got = s.client.recent(&b.session, &chat, 100).await.unwrap();
        (!got.is_empty()).then_some(got)
    })
    .await;
    assert_eq!(stored.len(), 1);

    // Reading a session you are not in looks like reading one that does not exist.
    assert!(refused(s.client.recent(&outsider.session, &chat, 5).await).contains("not found"));
    assert!(refused(s.client.history(&outsider.session, &chat, 0, i64::MAX).await).contains("not found"));
    assert!(refused(s.client.search_messages(&outsider.session, &chat, "only").await).contains("not found"));
    assert!(refused(s.client.recent(&a.session, &chat, 0).await).contains("msg_count"));
    assert!(refused(s.client.recent(&a.session, &chat, 5000).await).contains("msg_count"));
    assert!(refused(s.client.history(&a.session, &chat, 10, 5).await).contains("start_time"));
    assert!(refused(s.client.search_messages(&a.session, &chat, " ").await).contains("empty"));
    // A removed friend's session cannot be written to any more; its history stays stored.
    s.client.remove_friend(&a.session, &b.id).await.unwrap();
    assert!(refused(s.client.send_text(&a.session, &chat, "after").await).contains("not found"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_cross_gateways() {
    let Some(s) = Stack::start(Backend::Real).await else { return };
    let (second, other_gateway) = s.spawn("gateway").await;
    let a = person(&s, "gwA").await;
    let b = person(&s, "gwB").await;
    let chat = befriend(&s.client, &a, &b).await;
    // B has one device on each gateway; A sends through the first, then through the second.
    let mut b_far = other_gateway.notifications("/ws", &b.session).await.unwrap();
    let b_near_session =
        s.client.login(&s.client.user_info(&b.session).await.unwrap().nickname, "pass_word-1").await.unwrap();
    let mut b_near = s.client.notifications("/ws", &b_near_session).await.unwrap();
    let mut a_far = other_gateway.notifications("/ws", &a.session).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await; // presence recorded
    s.client.send_text(&a.session, &chat, "via the first gateway").await.unwrap();
    for ws in [&mut b_far, &mut b_near] {
        let m = pushed(ws.expect(NotifyType::ChatMessageNotify, WAIT).await);
        assert!(matches!(body(&m), MsgContent::StringMessage(t) if t.content == "via the first gateway"));
    }
    quiet(&mut b_near).await; // one push per device: the local one is not routed to itself again
    quiet(&mut a_far).await; // the sender's session is skipped on every gateway
    other_gateway.send_text(&b_near_session, &chat, "via the second gateway").await.unwrap();
    let m = pushed(a_far.expect(NotifyType::ChatMessageNotify, WAIT).await);
    assert!(matches!(body(&m), MsgContent::StringMessage(t) if t.content == "via the second gateway"));
    b_far.expect(NotifyType::ChatMessageNotify, WAIT).await; // B's other device
    quiet(&mut b_near).await;
    // Friend notifications cross gateways too.
    let c = person(&s, "gwC").await;
    s.client.apply(&c.session, &a.id).await.unwrap();
    a_far.expect(NotifyType::FriendAddApplyNotify, WAIT).await;
    second.stop().await;
    s.stop().await;
}

fn rabbitmqctl(command: &str) {
    let status = std::process::Command::new("/usr/lib/rabbitmq/bin/rabbitmqctl")
        .args(["-n", "rabbit@localhost", command])
        .env("ERL_EPMD_ADDRESS", "127.0.0.1")
        .stdout(std::process::Stdio::null())
        .status()
        .expect("rabbitmqctl runs (e2e/infra/rabbitmq.sh installs it)");
    assert!(status.success(), "rabbitmqctl {command}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_restarts_exactly_once() {
    let Some(s) = Stack::start_parts(Backend::Real, "gateway,user,friend,file,transmit", &[]).await else { return };
    let (storage, _) = s.spawn("message").await;
    let a = person(&s, "ftA").await;
    let b = person(&s, "ftB").await;
    let chat = befriend(&s.client, &a, &b).await;

    // A steady stream of sends while the storage service and then RabbitMQ restart.
    let sender = {
        let (client, session, chat) = (s.client.clone(), a.session.clone(), chat.clone());
        tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..120 {
                if client.send_text(&session, &chat, &format!("m{i}")).await.is_ok() {
                    acked.push(format!("m{i}"));
                }
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            acked
        })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    storage.stop().await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (storage, _) = s.spawn("message").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    tokio::task::spawn_blocking(|| {
        rabbitmqctl("stop_app");
        std::thread::sleep(Duration::from_millis(500));
        rabbitmqctl("start_app");
    })
    .await
    .unwrap();
    let acked = sender.await.unwrap();
    assert!(acked.len() >= 60, "most sends succeed despite the restarts: {}", acked.len());

    let history = eventually("every acknowledged message stored", || async {
        let got = s.client.history(&b.session, &chat, 0, i64::MAX).await.unwrap();
        let texts: Vec<String> = got
            .iter()
            .filter_map(|m| match body(m) {
                MsgContent::StringMessage(t) => Some(t.content.clone()),
                _ => None,
            })
            .collect();
        acked.iter().all(|t| texts.contains(t)).then_some(texts)
    })
    .await;
    let mut counts: HashMap<&String, usize> = HashMap::new();
    for t in &history {
        *counts.entry(t).or_default() += 1;
    }
    assert!(counts.values().all(|&n| n == 1), "no message is stored twice");
    storage.stop().await;
    s.stop().await;
}
