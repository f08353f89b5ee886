//! Files end to end through the gateway: single and multi upload and download, who may read
//! what, and the limits. Both backends.

mod support;

use chatmesh_e2e::rid;
use chatmesh_proto::*;
use support::Stack;

both_backends!(single_and_multi_round_trip, only_the_uploader_reads_a_file, bad_uploads_change_nothing);

fn upload(name: &str, content: &[u8]) -> FileUploadData {
    FileUploadData { file_name: name.into(), file_size: content.len() as i64, file_content: content.to_vec() }
}

async fn single_and_multi_round_trip(s: &Stack) {
    let (_, me) = s.user("files").await;
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let id = s.client.put_file(&me, "报告.pdf", big.clone()).await.unwrap();
    assert_eq!(s.client.get_file(&me, &id).await.unwrap(), big);

    let req = PutMultiFileReq {
        request_id: rid(),
        session_id: Some(me.clone()),
        file_data: vec![upload("a.txt", b"alpha"), upload("b.bin", &[0, 1, 2]), upload("empty", b"")],
        ..Default::default()
    };
    let rsp: PutMultiFileRsp = s.client.ok("/service/file/put_multi_file", &req).await.unwrap();
    let infos = rsp.file_info;
    assert_eq!(
        infos.iter().map(|f| (f.file_name.as_str(), f.file_size)).collect::<Vec<_>>(),
        [("a.txt", 5), ("b.bin", 3), ("empty", 0)]
    );
    let ids: Vec<String> = infos.iter().map(|f| f.file_id.clone().unwrap()).collect();
    let req = GetMultiFileReq {
        request_id: rid(),
        session_id: Some(me.clone()),
        file_id_list: ids.clone(),
        ..Default::default()
    };
    let rsp: GetMultiFileRsp = s.client.ok("/service/file/get_multi_file", &req).await.unwrap();
    assert_eq!(rsp.file_data[&ids[0]].file_content, b"alpha");
    assert_eq!(rsp.file_data[&ids[1]].file_content, [0, 1, 2]);
    assert!(rsp.file_data[&ids[2]].file_content.is_empty());
}

async fn only_the_uploader_reads_a_file(s: &Stack) {
    let (_, owner) = s.user("owner").await;
    let (_, other) = s.user("other").await;
    let id = s.client.put_file(&owner, "secret.txt", b"mine".to_vec()).await.unwrap();
    let denied = s.client.get_file(&other, &id).await.unwrap_err().to_string();
    let missing = s.client.get_file(&other, "0123456789abcdef0123456789abcdef").await.unwrap_err().to_string();
    assert!(denied.contains("not found") && missing.contains("not found"), "{denied} / {missing}");
    // Someone else's file inside a multi request fails the whole request.
    let mine = s.client.put_file(&other, "ok.txt", b"ok".to_vec()).await.unwrap();
    let req = GetMultiFileReq {
        request_id: rid(),
        session_id: Some(other.clone()),
        file_id_list: vec![mine, id.clone()],
        ..Default::default()
    };
    let rsp: GetMultiFileRsp = s.client.call("/service/file/get_multi_file", &req).await.unwrap();
    assert!(!rsp.success && rsp.file_data.is_empty(), "{rsp:?}");
    // A client cannot mark its own upload public: the internal access field is dropped.
    let req = PutSingleFileReq {
        request_id: rid(),
        session_id: Some(other.clone()),
        file_data: Some(upload("sneaky", b"x")),
        access: Some(FileAccess { chat_session_id: None, public_read: true }),
        ..Default::default()
    };
    let rsp: PutSingleFileRsp = s.client.ok("/service/file/put_single_file", &req).await.unwrap();
    let sneaky = rsp.file_info.unwrap().file_id.unwrap();
    assert!(s.client.get_file(&owner, &sneaky).await.is_err());
    // Without a session nothing is read at all.
    let req = GetSingleFileReq { request_id: rid(), file_id: id, ..Default::default() };
    let rsp: GetSingleFileRsp = s.client.call("/service/file/get_single_file", &req).await.unwrap();
    assert!(!rsp.success && rsp.errmsg.contains("invalid or expired"));
}

async fn bad_uploads_change_nothing(s: &Stack) {
    let (_, me) = s.user("badup").await;
    let cases = [
        (vec![upload("", b"x")], "name is empty"),
        (vec![upload("   ", b"x")], "name is empty"),
        (vec![upload(&"n".repeat(256), b"x")], "longer than 255"),
        (
            vec![FileUploadData { file_name: "liar".into(), file_size: 99, file_content: b"abc".to_vec() }],
            "does not match",
        ),
        (vec![upload("fine", b"ok"), upload("", b"bad")], "name is empty"),
        (vec![], "no file data"),
        ((0..33).map(|i| upload(&format!("f{i}"), b"x")).collect(), "more than 32"),
    ];
    for (files, expect) in cases {
        let req =
            PutMultiFileReq { request_id: rid(), session_id: Some(me.clone()), file_data: files, ..Default::default() };
        let rsp: PutMultiFileRsp = s.client.call("/service/file/put_multi_file", &req).await.unwrap();
        assert!(!rsp.success && rsp.errmsg.contains(expect), "{expect}: {}", rsp.errmsg);
        assert!(rsp.file_info.is_empty());
    }
    let req = PutSingleFileReq { request_id: rid(), session_id: Some(me.clone()), ..Default::default() };
    let rsp: PutSingleFileRsp = s.client.call("/service/file/put_single_file", &req).await.unwrap();
    assert!(!rsp.success && rsp.errmsg.contains("no file data"));
    let req = GetSingleFileReq {
        request_id: rid(),
        file_id: "../../etc/passwd".into(),
        session_id: Some(me.clone()),
        ..Default::default()
    };
    let rsp: GetSingleFileRsp = s.client.call("/service/file/get_single_file", &req).await.unwrap();
    assert!(!rsp.success && rsp.errmsg.contains("not found"));
}
