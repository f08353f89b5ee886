//! A local stand-in for Aliyun's SMS endpoint (we cannot reach the real one): it answers
//! `SendSms` as Aliyun documents and records the codes, so tests can log in by phone. The
//! signature itself is verified by the unit tests of `chatmesh_user::sms`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;

pub const KEY_ID: &str = "test-key-id";
pub const KEY_SECRET: &str = "test-key-secret";

#[derive(Clone, Default)]
pub struct FakeAliyun {
    sent: Arc<Mutex<Vec<(String, String)>>>,
    port: u16,
}

impl FakeAliyun {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let fake = FakeAliyun { port: listener.local_addr().unwrap().port(), ..Default::default() };
        let app = Router::new().route("/", get(send_sms)).with_state(fake.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        fake
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn last_code(&self, phone: &str) -> Option<String> {
        let sent = self.sent.lock().unwrap();
        sent.iter().rev().find(|(p, _)| p == phone).map(|(_, c)| c.clone())
    }

    pub fn count(&self) -> usize {
        self.sent.lock().unwrap().len()
    }
}

async fn send_sms(
    State(fake): State<FakeAliyun>,
    Query(q): Query<HashMap<String, String>>,
) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    let missing = ["Signature", "SignatureNonce", "Timestamp", "TemplateParam", "PhoneNumbers"]
        .into_iter()
        .find(|k| !q.contains_key(*k));
    if q.get("Action").map(String::as_str) != Some("SendSms")
        || q.get("AccessKeyId").map(String::as_str) != Some(KEY_ID)
        || missing.is_some()
    {
        return json(serde_json::json!({"Code": "InvalidParameter", "Message": "bad request", "RequestId": "fake"}));
    }
    let param: serde_json::Value = serde_json::from_str(&q["TemplateParam"]).unwrap_or_default();
    let code = param["code"].as_str().unwrap_or_default().to_string();
    fake.sent.lock().unwrap().push((q["PhoneNumbers"].clone(), code));
    json(serde_json::json!({"Code": "OK", "Message": "OK", "BizId": "fake-biz", "RequestId": "fake-req"}))
}

fn json(v: serde_json::Value) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    ([(CONTENT_TYPE, "application/json")], v.to_string())
}
