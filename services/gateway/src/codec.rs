//! Request and response bodies: the seed's raw protobuf, or proto3 JSON for curl and browsers.
//! JSON is transcoded through the descriptors, so both forms always mean the same message.

use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use prost::{Message, Name};
use prost_reflect::{DynamicMessage, SerializeOptions};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Protobuf,
    Json,
}

impl Format {
    /// JSON when the client says so; protobuf otherwise, as the seed's clients expect.
    pub fn of(headers: &HeaderMap) -> Self {
        let json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().starts_with("application/json"));
        if json { Format::Json } else { Format::Protobuf }
    }
}

pub fn decode<M: Message + Name + Default>(format: Format, body: &[u8]) -> Result<M, String> {
    match format {
        Format::Protobuf => M::decode(body).map_err(|e| format!("body is not a valid {}: {e}", M::full_name())),
        Format::Json => {
            let desc = descriptor::<M>();
            let mut de = serde_json::Deserializer::from_slice(body);
            let dynamic = DynamicMessage::deserialize(desc, &mut de)
                .and_then(|m| de.end().map(|()| m))
                .map_err(|e| format!("body is not valid JSON for {}: {e}", M::full_name()))?;
            M::decode(dynamic.encode_to_vec().as_slice()).map_err(|e| e.to_string())
        }
    }
}

pub fn encode<M: Message + Name>(format: Format, msg: &M) -> Response {
    let bytes = msg.encode_to_vec();
    match format {
        Format::Protobuf => {
            ([(header::CONTENT_TYPE, HeaderValue::from_static("application/x-protobuf"))], bytes).into_response()
        }
        Format::Json => {
            let dynamic = DynamicMessage::decode(descriptor::<M>(), bytes.as_slice()).expect("own encoding decodes");
            let mut out = Vec::new();
            let mut ser = serde_json::Serializer::new(&mut out);
            // Field names as in the seed's .proto files, and every field shown (success=false too).
            let options = SerializeOptions::new().use_proto_field_name(true).skip_default_fields(false);
            dynamic.serialize_with_options(&mut ser, &options).expect("JSON serialization to memory succeeds");
            ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], out).into_response()
        }
    }
}

fn descriptor<M: Name>() -> prost_reflect::MessageDescriptor {
    chatmesh_proto::descriptor_pool()
        .get_message_by_name(&M::full_name())
        .expect("every generated message is in the descriptor pool")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatmesh_proto::{UserLoginReq, UserLoginRsp};

    #[test]
    fn json_and_protobuf_decode_to_the_same_message() {
        let json = br#"{"request_id":"r","nickname":"alice","password":"secret1"}"#;
        let camel = br#"{"requestId":"r","nickname":"alice","password":"secret1"}"#;
        let from_json: UserLoginReq = decode(Format::Json, json).unwrap();
        let from_camel: UserLoginReq = decode(Format::Json, camel).unwrap();
        let from_pb: UserLoginReq = decode(Format::Protobuf, &from_json.encode_to_vec()).unwrap();
        assert_eq!(from_json, from_pb);
        assert_eq!(from_json, from_camel);
        assert_eq!(from_json.nickname, "alice");
    }

    #[test]
    fn bad_bodies_are_refused_with_the_message_name() {
        let err = decode::<UserLoginReq>(Format::Json, br#"{"nickname": 5}"#).unwrap_err();
        assert!(err.contains("bite_im.UserLoginReq"), "{err}");
        assert!(decode::<UserLoginReq>(Format::Json, br#"{"nickname":"a"} trailing"#).is_err());
        assert!(decode::<UserLoginReq>(Format::Protobuf, &[0xff, 0xff, 0xff]).is_err());
    }

    #[tokio::test]
    async fn json_responses_show_every_field() {
        let rsp = UserLoginRsp { request_id: "r".into(), ..Default::default() };
        let body = encode(Format::Json, &rsp).into_body();
        let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["success"], false);
        assert_eq!(v["errmsg"], "");
    }
}
