//! Friends and chat sessions end to end (features 11-19 of the seed) with the four
//! notifications they push, and the authorization around them. Both backends.

mod support;

use std::time::Duration;

use chatmesh_e2e::{Event, Notifications, rid};
use chatmesh_proto::notify_message::NotifyRemarks;
use chatmesh_proto::*;
use support::{Stack, person, refused};

both_backends!(
    three_users_from_search_to_group,
    applications_are_checked,
    sessions_are_shown_to_members_only,
    search_follows_profiles
);

const WAIT: Duration = Duration::from_secs(5);

fn new_session(n: &NotifyMessage) -> ChatSessionInfo {
    match &n.notify_remarks {
        Some(NotifyRemarks::NewChatSessionInfo(x)) => x.chat_session_info.clone().unwrap(),
        other => panic!("not a new session: {other:?}"),
    }
}

async fn quiet(ws: &mut Notifications) {
    assert_eq!(ws.next(Duration::from_millis(300)).await, Event::Quiet);
}

async fn three_users_from_search_to_group(s: &Stack) {
    let a = person(s, "ann").await;
    let b = person(s, "小明").await;
    let c = person(s, "Carl").await;
    let mut wa = s.client.notifications("/ws", &a.session).await.unwrap();
    let mut wb = s.client.notifications("/ws", &b.session).await.unwrap();
    let mut wb2 = s.client.notifications("/second-device", &b.session).await.unwrap();
    let mut wc = s.client.notifications("/", &c.session).await.unwrap();

    // Search: partial nickname (Chinese and any-case English), user id; never yourself.
    let found = s.client.search(&a.session, "小明").await.unwrap();
    assert!(found.iter().any(|u| u.user_id == b.id), "{found:?}");
    let found = s.client.search(&a.session, &c.nickname[1..6].to_uppercase()).await.unwrap();
    assert!(found.iter().any(|u| u.user_id == c.id), "{found:?}");
    assert_eq!(
        s.client.search(&a.session, &b.id).await.unwrap().iter().map(|u| &u.user_id).collect::<Vec<_>>(),
        [&b.id]
    );
    assert!(s.client.search(&a.session, &a.nickname).await.unwrap().is_empty(), "yourself is left out");

    // A applies to B: both of B's devices hear of it, with A's profile and the event id.
    let event = s.client.apply(&a.session, &b.id).await.unwrap();
    for ws in [&mut wb, &mut wb2] {
        let n = ws.expect(NotifyType::FriendAddApplyNotify, WAIT).await;
        assert_eq!(n.notify_event_id.as_deref(), Some(event.as_str()));
        match n.notify_remarks {
            Some(NotifyRemarks::FriendAddApply(x)) => assert_eq!(x.user_info.unwrap().nickname, a.nickname),
            other => panic!("{other:?}"),
        }
    }
    let pending = s.client.pending(&b.session).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(
        (pending[0].event_id.as_str(), pending[0].sender.as_ref().unwrap().user_id.as_str()),
        (event.as_str(), a.id.as_str())
    );

    // B accepts: A learns the answer; both get the new one-to-one session, named for the other.
    s.client.process(&b.session, &event, &a.id, true).await.unwrap();
    let n = wa.expect(NotifyType::FriendAddProcessNotify, WAIT).await;
    match n.notify_remarks {
        Some(NotifyRemarks::FriendProcessResult(x)) => {
            assert!(x.agree);
            assert_eq!(x.user_info.unwrap().user_id, b.id);
        }
        other => panic!("{other:?}"),
    }
    let for_a = new_session(&wa.expect(NotifyType::ChatSessionCreateNotify, WAIT).await);
    let for_b = new_session(&wb.expect(NotifyType::ChatSessionCreateNotify, WAIT).await);
    assert_eq!(for_a.chat_session_id, for_b.chat_session_id);
    assert_eq!(
        (for_a.single_chat_friend_id.as_deref(), for_a.chat_session_name.as_str()),
        (Some(b.id.as_str()), b.nickname.as_str())
    );
    assert_eq!(for_b.single_chat_friend_id.as_deref(), Some(a.id.as_str()));
    wb2.expect(NotifyType::ChatSessionCreateNotify, WAIT).await;
    assert!(s.client.pending(&b.session).await.unwrap().is_empty());
    assert_eq!(s.client.friends(&a.session).await.unwrap().iter().map(|u| &u.user_id).collect::<Vec<_>>(), [&b.id]);
    assert_eq!(s.client.friends(&b.session).await.unwrap().iter().map(|u| &u.user_id).collect::<Vec<_>>(), [&a.id]);
    assert!(
        s.client.search(&a.session, "小明").await.unwrap().iter().all(|u| u.user_id != b.id),
        "friends are left out"
    );

    // A applies to C, C rejects; then C applies to A and A accepts.
    let event = s.client.apply(&a.session, &c.id).await.unwrap();
    wc.expect(NotifyType::FriendAddApplyNotify, WAIT).await;
    s.client.process(&c.session, &event, &a.id, false).await.unwrap();
    match wa.expect(NotifyType::FriendAddProcessNotify, WAIT).await.notify_remarks {
        Some(NotifyRemarks::FriendProcessResult(x)) => assert!(!x.agree),
        other => panic!("{other:?}"),
    }
    quiet(&mut wa).await; // no session for a rejection
    assert!(s.client.friends(&c.session).await.unwrap().is_empty());
    let event = s.client.apply(&c.session, &a.id).await.unwrap();
    wa.expect(NotifyType::FriendAddApplyNotify, WAIT).await;
    s.client.process(&a.session, &event, &c.id, true).await.unwrap();
    wc.expect(NotifyType::FriendAddProcessNotify, WAIT).await;
    wc.expect(NotifyType::ChatSessionCreateNotify, WAIT).await;
    wa.expect(NotifyType::ChatSessionCreateNotify, WAIT).await;

    // A group of three: every member (every device) is told.
    let members = vec![a.id.clone(), b.id.clone(), c.id.clone()];
    s.client.create_group(&a.session, "三人行 trio", &members).await.unwrap();
    let mut group_id = String::new();
    for ws in [&mut wa, &mut wb, &mut wb2, &mut wc] {
        let info = new_session(&ws.expect(NotifyType::ChatSessionCreateNotify, WAIT).await);
        assert_eq!((info.chat_session_name.as_str(), info.single_chat_friend_id.as_ref()), ("三人行 trio", None));
        group_id = info.chat_session_id;
    }
    let mut listed: Vec<String> =
        s.client.members(&b.session, &group_id).await.unwrap().into_iter().map(|u| u.user_id).collect();
    listed.sort();
    let mut expected = members.clone();
    expected.sort();
    assert_eq!(listed, expected);
    assert_eq!(s.client.chat_sessions(&a.session).await.unwrap().len(), 3);
    assert_eq!(s.client.chat_sessions(&b.session).await.unwrap().len(), 2);

    // B removes A: A is told; the friendship and its session are gone, the group stays.
    s.client.remove_friend(&b.session, &a.id).await.unwrap();
    match wa.expect(NotifyType::FriendRemoveNotify, WAIT).await.notify_remarks {
        Some(NotifyRemarks::FriendRemove(x)) => assert_eq!(x.user_id, b.id),
        other => panic!("{other:?}"),
    }
    assert!(s.client.friends(&b.session).await.unwrap().is_empty());
    let b_sessions = s.client.chat_sessions(&b.session).await.unwrap();
    assert_eq!(b_sessions.iter().map(|x| x.chat_session_id.as_str()).collect::<Vec<_>>(), [group_id.as_str()]);
    assert_eq!(s.client.chat_sessions(&a.session).await.unwrap().len(), 2);
    let again = refused(s.client.remove_friend(&b.session, &a.id).await);
    assert!(again.contains("not friends"), "{again}");
    for ws in [&mut wa, &mut wb, &mut wb2, &mut wc] {
        quiet(ws).await;
    }
}

async fn applications_are_checked(s: &Stack) {
    let a = person(s, "apA").await;
    let b = person(s, "apB").await;
    let c = person(s, "apC").await;
    assert!(refused(s.client.apply(&a.session, &a.id).await).contains("yourself"));
    assert!(refused(s.client.apply(&a.session, "0123456789abcdef0123456789abcdef").await).contains("unknown user"));
    let event = s.client.apply(&a.session, &b.id).await.unwrap();
    assert!(refused(s.client.apply(&a.session, &b.id).await).contains("already applied"));
    // Nobody but B processes it, and only as an application from A.
    assert!(refused(s.client.process(&c.session, &event, &a.id, true).await).contains("no such"));
    assert!(refused(s.client.process(&a.session, &event, &a.id, true).await).contains("no such"));
    assert!(refused(s.client.process(&b.session, &event, &c.id, true).await).contains("no such"));
    assert!(refused(s.client.process(&b.session, "made-up", &a.id, true).await).contains("no such"));
    assert!(s.client.friends(&c.session).await.unwrap().is_empty());
    s.client.process(&b.session, &event, &a.id, true).await.unwrap();
    assert!(refused(s.client.process(&b.session, &event, &a.id, true).await).contains("no such"), "processed once");
    assert!(refused(s.client.apply(&b.session, &a.id).await).contains("already friends"));
    assert_eq!(s.client.chat_sessions(&a.session).await.unwrap().len(), 1, "one session, not two");
    // An application the other way is settled by the acceptance too.
    let event = s.client.apply(&c.session, &a.id).await.unwrap();
    let back = s.client.apply(&a.session, &c.id).await.unwrap();
    s.client.process(&a.session, &event, &c.id, true).await.unwrap();
    assert!(s.client.pending(&c.session).await.unwrap().is_empty());
    assert!(refused(s.client.process(&c.session, &back, &a.id, true).await).contains("no such"));
}

async fn sessions_are_shown_to_members_only(s: &Stack) {
    let a = person(s, "smA").await;
    let b = person(s, "smB").await;
    let outsider = person(s, "smX").await;
    let both = vec![a.id.clone(), b.id.clone()];
    let no_creator = vec![b.id.clone(), outsider.id.clone()];
    let unknown = vec![a.id.clone(), "0123456789abcdef0123456789abcdef".to_string()];
    for (members, name, expect) in [
        (vec![], "g", "include its creator"),
        (vec![a.id.clone()], "g", "at least two"),
        (no_creator, "g", "include its creator"),
        (unknown, "g", "unknown user"),
        (both.clone(), "g", "not your friend"),
        (both.clone(), "", "1 to 64"),
        (both.clone(), &"n".repeat(65) as &str, "1 to 64"),
    ] {
        let msg = refused(s.client.create_group(&a.session, name, &members).await);
        assert!(msg.contains(expect), "{expect}: {msg}");
    }
    assert!(s.client.chat_sessions(&a.session).await.unwrap().is_empty(), "refused groups changed nothing");
    let event = s.client.apply(&a.session, &b.id).await.unwrap();
    s.client.process(&b.session, &event, &a.id, true).await.unwrap();
    s.client.create_group(&a.session, "pair", &[a.id.clone(), b.id.clone(), a.id.clone()]).await.unwrap();
    let group =
        s.client.chat_sessions(&b.session).await.unwrap().into_iter().find(|g| g.chat_session_name == "pair").unwrap();
    assert_eq!(s.client.members(&a.session, &group.chat_session_id).await.unwrap().len(), 2, "duplicates collapse");
    let not_yours = refused(s.client.members(&outsider.session, &group.chat_session_id).await);
    let unknown = refused(s.client.members(&outsider.session, "no-such-session").await);
    assert_eq!(not_yours, unknown, "a session you are not in looks like one that does not exist");
    // Spoofing the user id does not help: the session decides.
    let req = GetChatSessionMemberReq {
        request_id: rid(),
        session_id: Some(outsider.session.clone()),
        user_id: Some(a.id.clone()),
        chat_session_id: group.chat_session_id.clone(),
    };
    let rsp: GetChatSessionMemberRsp = s.client.call("/service/friend/get_chat_session_member", &req).await.unwrap();
    assert!(!rsp.success && rsp.member_info_list.is_empty());
    assert!(refused(s.client.search(&a.session, "   ").await).contains("empty"));
    assert!(refused(s.client.remove_friend(&a.session, &outsider.id).await).contains("not friends"));
}

async fn search_follows_profiles(s: &Stack) {
    let a = person(s, "sfA").await;
    let b = person(s, "sfB").await;
    let fresh = format!("Zebra{}", &rid()[..6]);
    let req = SetUserNicknameReq {
        request_id: rid(),
        session_id: Some(b.session.clone()),
        nickname: fresh.clone(),
        ..Default::default()
    };
    let _: SetUserNicknameRsp = s.client.ok("/service/user/set_nickname", &req).await.unwrap();
    let found = s.client.search(&a.session, &fresh.to_lowercase()).await.unwrap();
    assert_eq!(found.iter().map(|u| u.nickname.as_str()).collect::<Vec<_>>(), [fresh.as_str()]);
    assert!(s.client.search(&a.session, &b.nickname).await.unwrap().is_empty(), "the old name is gone from the index");
    let phone = "13300133011";
    let (id, code) = s.code(phone).await;
    let req = SetUserPhoneNumberReq {
        request_id: rid(),
        session_id: Some(b.session.clone()),
        phone_number: phone.into(),
        phone_verify_code_id: id,
        phone_verify_code: code,
        ..Default::default()
    };
    let _: SetUserPhoneNumberRsp = s.client.ok("/service/user/set_phone", &req).await.unwrap();
    // Only the exact number finds its owner, and strangers never see it.
    assert!(s.client.search(&a.session, "133001330").await.unwrap().is_empty(), "no phone substrings");
    let found = s.client.search(&a.session, phone).await.unwrap();
    assert_eq!(found.iter().map(|u| u.user_id.as_str()).collect::<Vec<_>>(), [b.id.as_str()]);
    assert_eq!(found[0].phone, "", "a phone number is shown to its owner only");
    // Search metacharacters are literal.
    assert!(s.client.search(&a.session, "%").await.unwrap().is_empty());
    assert!(s.client.search(&a.session, "*").await.unwrap().is_empty());
}
