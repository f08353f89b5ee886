//! Property-based fuzzing of what the gateway decodes from clients: request bodies (protobuf and
//! proto3 JSON), the early session scan, and the WebSocket auth frame. Whatever the bytes: no
//! panic, and a refusal that says what was expected.

use chatmesh_gateway::body::{Scan, scan};
use chatmesh_gateway::codec::{Format, decode};
use chatmesh_gateway::websocket::auth_session;
use chatmesh_proto::*;
use proptest::prelude::*;
use prost::Message;

fn decodes<M: Message + prost::Name + Default>(format: Format, bytes: &[u8]) {
    if let Err(e) = decode::<M>(format, bytes) {
        assert!(e.contains(&M::full_name()) || !e.is_empty(), "{e}");
    }
}

/// JSON-shaped text: arbitrary values under the message's real field names.
fn json_body() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<String>().prop_map(|s| serde_json::Value::String(s).to_string()),
        Just("null".to_string()),
        Just("[1, {}]".to_string()),
        Just("true".to_string()),
        any::<f64>().prop_map(|f| f.to_string()),
    ];
    let field = prop_oneof![
        Just("request_id"),
        Just("session_id"),
        Just("nickname"),
        Just("message"),
        Just("file_data"),
        Just("chat_session_id"),
        Just("msg_count"),
        Just("file_id_list"),
        Just("unknownField"),
    ];
    prop::collection::vec((field, value), 0..6).prop_map(|pairs| {
        let body: Vec<String> = pairs.into_iter().map(|(k, v)| format!("\"{k}\": {v}")).collect();
        format!("{{{}}}", body.join(", "))
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn protobuf_bodies_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        decodes::<UserLoginReq>(Format::Protobuf, &bytes);
        decodes::<NewMessageReq>(Format::Protobuf, &bytes);
        decodes::<PutMultiFileReq>(Format::Protobuf, &bytes);
        decodes::<GetRecentMsgReq>(Format::Protobuf, &bytes);
        decodes::<ChatSessionCreateReq>(Format::Protobuf, &bytes);
    }

    #[test]
    fn json_bodies_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256), text in json_body()) {
        decodes::<UserLoginReq>(Format::Json, &bytes);
        decodes::<NewMessageReq>(Format::Json, text.as_bytes());
        decodes::<PutSingleFileReq>(Format::Json, text.as_bytes());
        decodes::<GetRecentMsgReq>(Format::Json, text.as_bytes());
        decodes::<GetMultiFileReq>(Format::Json, text.as_bytes());
    }

    #[test]
    fn the_session_scan_never_panics_and_finds_real_sessions(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
        session in "[a-f0-9]{0,64}",
        content in prop::collection::vec(any::<u8>(), 0..2048),
    ) {
        let _ = scan(&bytes, 3);
        let req = PutSingleFileReq {
            request_id: "r".into(),
            session_id: Some(session.clone()),
            file_data: Some(FileUploadData { file_name: "f".into(), file_size: 0, file_content: content }),
            ..Default::default()
        };
        let encoded = req.encode_to_vec();
        prop_assert_eq!(scan(&encoded, 3), Scan::Found(session.as_bytes()));
    }

    #[test]
    fn auth_frames_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        match auth_session(&bytes) {
            Ok(session) => prop_assert!(!session.is_empty() && session.len() <= 128),
            Err(why) => prop_assert!(why.contains("ClientAuthenticationReq") || why.contains("session")),
        }
    }
}
