//! Delivery of phone verification codes.
//!
//! `AliyunSms` sends through Aliyun Dysms `SendSms`; `LogSms` only logs the code and is for
//! development. Both are used as `Arc<dyn SmsSender>`, so the trait returns a boxed future
//! instead of being an `async fn` (which would not be dyn-compatible).
//!
//! Secrets: the verification code is never logged (except by `LogSms`, on purpose), nor is the
//! AccessKey secret. The code travels in the request URL (TemplateParam), so neither reqwest
//! errors (whose Display includes the URL) nor Aliyun's error messages (which echo the
//! string-to-sign) may reach our errors or logs unscrubbed.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;

pub type SendFuture<'a> = Pin<Box<dyn Future<Output = Result<(), SmsError>> + Send + 'a>>;

/// Sends a verification code to a phone number.
pub trait SmsSender: Send + Sync {
    fn send_code<'a>(&'a self, phone: &'a str, code: &'a str) -> SendFuture<'a>;
}

#[derive(Debug, thiserror::Error)]
pub enum SmsError {
    /// Network failure, timeout or unreadable reply: the SMS may or may not have gone out.
    #[error("sms transport failure: {0}")]
    Transport(String),
    /// The provider answered with an error code, e.g. `isv.MOBILE_NUMBER_ILLEGAL`.
    #[error("sms provider rejected the request: {code}: {message}")]
    Rejected { code: String, message: String },
    /// Our configuration is unusable; retrying will not help.
    #[error("sms configuration error: {0}")]
    Config(String),
}

// ---------------------------------------------------------------------------------------------
// Aliyun Dysms SendSms, RPC style, signature version 1.0.
//
// Relied on (Aliyun's docs, as found with the docs search):
// - "Signature mechanism" for RPC APIs, e.g. https://help.aliyun.com/document_detail/69009.html
//   and https://www.alibabacloud.com/help/en/short-message-service/latest/signature-method:
//   sort all parameters except Signature by name; percent-encode names and values as UTF-8 with
//   A-Z a-z 0-9 - _ . ~ unencoded, everything else %XY (uppercase hex), space as %20 (not +);
//   join `k=v` with `&`; StringToSign = "GET&" + percentEncode("/") + "&" +
//   percentEncode(CanonicalizedQueryString); Signature = Base64(HMAC-SHA1(key = AccessKeySecret
//   + "&", StringToSign)); the Signature itself is percent-encoded into the query too.
// - Common parameters: https://www.alibabacloud.com/help/en/short-message-service/latest/common-parameters
//   (Timestamp is UTC `yyyy-MM-ddTHH:mm:ssZ`; SignatureNonce unique per request, UUID advised).
// - The worked SendSms example (testId/testSecret -> zJDF+Lrzhj/ThnlvIToysFRq6t4=) from Aliyun's
//   "HTTP协议及签名" guide, https://developer.aliyun.com/ask/218522 and /ask/278546; it is the
//   first unit test below.
// - SignatureDoesNotMatch replies echo "server string to sign is:..." including TemplateParam,
//   as seen in https://github.com/dromara/SMS4J/issues/34: hence `scrub_provider_message`.
// ---------------------------------------------------------------------------------------------

pub const ALIYUN_DEFAULT_ENDPOINT: &str = "https://dysmsapi.aliyuncs.com";
pub const ALIYUN_DEFAULT_REGION: &str = "cn-hangzhou";

#[derive(Clone)]
pub struct AliyunConfig {
    pub endpoint: String,
    pub access_key_id: String,
    pub access_key_secret: String,
    pub sign_name: String,
    pub template_code: String,
    pub region_id: String,
    /// Whole-request timeout (connect + response).
    pub timeout: Duration,
}

impl Default for AliyunConfig {
    fn default() -> Self {
        Self {
            endpoint: ALIYUN_DEFAULT_ENDPOINT.to_owned(),
            access_key_id: String::new(),
            access_key_secret: String::new(),
            sign_name: String::new(),
            template_code: String::new(),
            region_id: ALIYUN_DEFAULT_REGION.to_owned(),
            timeout: Duration::from_secs(10),
        }
    }
}

// Hand-written so that logging a config (or an `AliyunSms`) can never print the secret.
impl fmt::Debug for AliyunConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AliyunConfig")
            .field("endpoint", &self.endpoint)
            .field("access_key_id", &self.access_key_id)
            .field("access_key_secret", &"<redacted>")
            .field("sign_name", &self.sign_name)
            .field("template_code", &self.template_code)
            .field("region_id", &self.region_id)
            .field("timeout", &self.timeout)
            .finish()
    }
}

#[derive(Debug)]
pub struct AliyunSms {
    config: AliyunConfig,
    http: reqwest::Client,
}

/// The `SendSms` reply; errors (HTTP 4xx) use the same `Code`/`Message` shape.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AliyunReply {
    code: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    biz_id: Option<String>,
    #[serde(default)]
    request_id: Option<String>,
}

impl AliyunSms {
    /// Checks the configuration up front so a bad deployment fails at startup, not at first login.
    pub fn new(mut config: AliyunConfig) -> Result<Self, SmsError> {
        let required = [
            ("access_key_id", &config.access_key_id),
            ("access_key_secret", &config.access_key_secret),
            ("sign_name", &config.sign_name),
            ("template_code", &config.template_code),
            ("region_id", &config.region_id),
        ];
        for (name, value) in required {
            if value.trim().is_empty() {
                return Err(SmsError::Config(format!("{name} is empty")));
            }
        }
        let url = reqwest::Url::parse(&config.endpoint)
            .map_err(|e| SmsError::Config(format!("endpoint {:?}: {e}", config.endpoint)))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(SmsError::Config(format!("endpoint {:?} is not http(s)", config.endpoint)));
        }
        if config.timeout.is_zero() {
            return Err(SmsError::Config("timeout is zero".into()));
        }
        config.endpoint = config.endpoint.trim_end_matches('/').to_owned();
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .build()
            .map_err(|e| SmsError::Config(format!("http client: {e}")))?;
        Ok(Self { config, http })
    }

    pub async fn send(&self, phone: &str, code: &str) -> Result<(), SmsError> {
        let timestamp = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        let nonce = uuid::Uuid::new_v4().to_string();
        let url = self.signed_url(phone, code, &timestamp, &nonce);
        self.execute(&url, phone, code).await
    }

    /// The full request URL; timestamp and nonce are parameters so tests can pin them.
    fn signed_url(&self, phone: &str, code: &str, timestamp: &str, nonce: &str) -> String {
        let c = &self.config;
        // serde_json escapes the code properly should it ever contain quotes.
        let template_param = serde_json::json!({ "code": code }).to_string();
        let params = [
            ("AccessKeyId", c.access_key_id.as_str()),
            ("Action", "SendSms"),
            ("Format", "JSON"),
            ("PhoneNumbers", phone),
            ("RegionId", c.region_id.as_str()),
            ("SignName", c.sign_name.as_str()),
            ("SignatureMethod", "HMAC-SHA1"),
            ("SignatureNonce", nonce),
            ("SignatureVersion", "1.0"),
            ("TemplateCode", c.template_code.as_str()),
            ("TemplateParam", template_param.as_str()),
            ("Timestamp", timestamp),
            ("Version", "2017-05-25"),
        ];
        let query = canonical_query(params);
        let signature = sign(&c.access_key_secret, &string_to_sign(&query));
        format!("{}/?Signature={}&{query}", c.endpoint, percent_encode(&signature))
    }

    async fn execute(&self, url: &str, phone: &str, code: &str) -> Result<(), SmsError> {
        let response = self.http.get(url).send().await.map_err(transport)?;
        let status = response.status();
        let body = response.bytes().await.map_err(transport)?;
        // Aliyun answers errors with 4xx *and* a JSON body; the body's Code is what matters.
        let reply: AliyunReply = serde_json::from_slice(&body)
            .map_err(|_| SmsError::Transport(format!("unreadable reply from Aliyun (HTTP {status})")))?;
        let phone = mask_phone(phone);
        let request_id = reply.request_id.as_deref().unwrap_or("");
        if reply.code == "OK" {
            let biz_id = reply.biz_id.as_deref().unwrap_or("");
            tracing::info!(%phone, biz_id, request_id, "verification SMS accepted by Aliyun");
            return Ok(());
        }
        let message = scrub_provider_message(&reply.message, code);
        tracing::warn!(%phone, provider_code = %reply.code, %message, request_id, http_status = status.as_u16(), "Aliyun rejected verification SMS");
        Err(SmsError::Rejected { code: reply.code, message })
    }
}

impl SmsSender for AliyunSms {
    fn send_code<'a>(&'a self, phone: &'a str, code: &'a str) -> SendFuture<'a> {
        Box::pin(self.send(phone, code))
    }
}

/// Aliyun's percent-encoding: RFC 3986 unreserved characters stay, all else is %XY.
const ALIYUN_ENCODE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

fn percent_encode(s: &str) -> String {
    utf8_percent_encode(s, ALIYUN_ENCODE).to_string()
}

/// Sorted, encoded `k=v&...` (without Signature). Names are ASCII, so byte order is Aliyun's
/// dictionary order.
fn canonical_query<'a>(params: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut params: Vec<_> = params.into_iter().collect();
    params.sort_unstable();
    params.iter().map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v))).collect::<Vec<_>>().join("&")
}

fn string_to_sign(canonical_query: &str) -> String {
    format!("GET&{}&{}", percent_encode("/"), percent_encode(canonical_query))
}

/// Base64(HMAC-SHA1(secret + "&", string_to_sign)).
fn sign(access_key_secret: &str, string_to_sign: &str) -> String {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(format!("{access_key_secret}&").as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(string_to_sign.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// reqwest's Display includes the URL, which carries the code: drop it, keep the cause chain.
fn transport(err: reqwest::Error) -> SmsError {
    SmsError::Transport(chatmesh_common::error_chain(&err.without_url()))
}

/// SignatureDoesNotMatch messages echo the server's string-to-sign (phone, TemplateParam with
/// the code): cut that off, and blank any other literal occurrence of the code.
fn scrub_provider_message(message: &str, code: &str) -> String {
    let cut = message.find("string to sign").map_or(message, |i| &message[..i]);
    let mut text = cut.trim_end().to_owned();
    if cut.len() < message.len() {
        text.push_str(" [string to sign redacted]");
    }
    if !code.is_empty() {
        text = text.replace(code, "******");
    }
    text
}

/// Enough of the number to correlate logs, not enough to identify the user.
fn mask_phone(phone: &str) -> String {
    let tail = phone.get(phone.len().saturating_sub(4)..).unwrap_or("");
    format!("***{tail}")
}

// ---------------------------------------------------------------------------------------------

/// DEVELOPMENT ONLY: writes the verification code to the log instead of sending it, so a
/// developer can log in without an SMS account. Never configure this in production: anyone who
/// can read the logs could then take over any account. This is the only place a code is logged.
#[derive(Debug, Default, Clone, Copy)]
pub struct LogSms;

impl SmsSender for LogSms {
    fn send_code<'a>(&'a self, phone: &'a str, code: &'a str) -> SendFuture<'a> {
        Box::pin(async move {
            tracing::warn!(phone, code, "DEVELOPMENT-ONLY SMS sender: verification code logged, not sent");
            Ok(())
        })
    }
}

/// Aliyun settings as flags / `CHATMESH_ALIYUN_*` env (the secret normally from a Secret).
#[derive(Clone, Default, clap::Args)]
pub struct AliyunArgs {
    #[arg(long, env = "CHATMESH_ALIYUN_ENDPOINT", default_value = ALIYUN_DEFAULT_ENDPOINT)]
    pub aliyun_endpoint: String,
    #[arg(long, env = "CHATMESH_ALIYUN_ACCESS_KEY_ID", default_value = "")]
    pub aliyun_access_key_id: String,
    #[arg(long, env = "CHATMESH_ALIYUN_ACCESS_KEY_SECRET", default_value = "", hide_env_values = true)]
    pub aliyun_access_key_secret: String,
    #[arg(long, env = "CHATMESH_ALIYUN_SIGN_NAME", default_value = "")]
    pub aliyun_sign_name: String,
    #[arg(long, env = "CHATMESH_ALIYUN_TEMPLATE_CODE", default_value = "")]
    pub aliyun_template_code: String,
    #[arg(long, env = "CHATMESH_ALIYUN_REGION", default_value = ALIYUN_DEFAULT_REGION)]
    pub aliyun_region: String,
}

impl fmt::Debug for AliyunArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.config().map(|c| c.fmt(f)).unwrap_or(Ok(()))
    }
}

impl AliyunArgs {
    pub fn config(&self) -> Result<AliyunConfig, SmsError> {
        Ok(AliyunConfig {
            endpoint: self.aliyun_endpoint.clone(),
            access_key_id: self.aliyun_access_key_id.clone(),
            access_key_secret: self.aliyun_access_key_secret.clone(),
            sign_name: self.aliyun_sign_name.clone(),
            template_code: self.aliyun_template_code.clone(),
            region_id: self.aliyun_region.clone(),
            ..Default::default()
        })
    }
}

#[cfg(test)]
pub mod tests_support {
    use super::*;
    use std::sync::Mutex;

    /// Records what would have been sent, for tests of the code logic.
    #[derive(Default)]
    pub struct Recorder(Mutex<Vec<(String, String)>>);

    impl Recorder {
        pub fn last_code(&self, phone: &str) -> Option<String> {
            let sent = self.0.lock().unwrap();
            sent.iter().rev().find(|(p, _)| p == phone).map(|(_, c)| c.clone())
        }
    }

    impl SmsSender for Recorder {
        fn send_code<'a>(&'a self, phone: &'a str, code: &'a str) -> SendFuture<'a> {
            self.0.lock().unwrap().push((phone.into(), code.into()));
            Box::pin(async { Ok(()) })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, HashSet};
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};

    use axum::extract::{Query, State};
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;

    // ----- signing, against fixed examples ---------------------------------------------------

    /// Aliyun's own worked example ("HTTP协议及签名", developer.aliyun.com/ask/218522): AccessKeyId
    /// testId, secret testSecret, these parameters, published signature zJDF+Lrzhj/ThnlvIToysFRq6t4=.
    #[test]
    fn signature_matches_aliyun_published_example() {
        let query = canonical_query([
            ("SignatureMethod", "HMAC-SHA1"),
            ("SignatureNonce", "45e25e9b-0a6f-4070-8c85-2956eda1b466"),
            ("AccessKeyId", "testId"),
            ("SignatureVersion", "1.0"),
            ("Timestamp", "2017-07-12T02:42:19Z"),
            ("Format", "XML"),
            ("Action", "SendSms"),
            ("Version", "2017-05-25"),
            ("RegionId", "cn-hangzhou"),
            ("PhoneNumbers", "15300000001"),
            ("SignName", "阿里云短信测试专用"),
            ("TemplateParam", r#"{"customer":"test"}"#),
            ("TemplateCode", "SMS_71390007"),
            ("OutId", "123"),
        ]);
        assert_eq!(sign("testSecret", &string_to_sign(&query)), "zJDF+Lrzhj/ThnlvIToysFRq6t4=");
    }

    /// Our own request shape, with a sign name that exercises space, '*', '~', '/' and UTF-8.
    /// Expected values computed independently, once, with Python's standard library:
    ///   import hmac,hashlib,base64,urllib.parse
    ///   pe=lambda s: urllib.parse.quote(s, safe='-_.~')
    ///   p={AccessKeyId:'LTAI-test-id', Action:'SendSms', Format:'JSON', PhoneNumbers:'13800138000',
    ///      RegionId:'cn-hangzhou', SignName:'Chat Mesh*测试~/', SignatureMethod:'HMAC-SHA1',
    ///      SignatureNonce:'0f8fad5b-d9cb-469f-a165-70867728950e', SignatureVersion:'1.0',
    ///      TemplateCode:'SMS_123456789', TemplateParam:'{"code":"123456"}',
    ///      Timestamp:'2024-01-02T03:04:05Z', Version:'2017-05-25'}
    ///   cq='&'.join(pe(k)+'='+pe(v) for k,v in sorted(p.items()))
    ///   sts='GET&'+pe('/')+'&'+pe(cq)
    ///   base64.b64encode(hmac.new(b'test-secret&', sts.encode(), hashlib.sha1).digest())
    ///   # -> WDXbma/4M2BrxZ8DBhpsbjNFJ2E= , percent-encoded into the URL below
    #[test]
    fn signed_url_matches_independent_computation() {
        let sms = AliyunSms::new(AliyunConfig {
            endpoint: "https://dysmsapi.aliyuncs.com/".into(),
            access_key_id: "LTAI-test-id".into(),
            access_key_secret: "test-secret".into(),
            sign_name: "Chat Mesh*测试~/".into(),
            template_code: "SMS_123456789".into(),
            ..Default::default()
        })
        .unwrap();
        let url =
            sms.signed_url("13800138000", "123456", "2024-01-02T03:04:05Z", "0f8fad5b-d9cb-469f-a165-70867728950e");
        assert_eq!(url, EXPECTED_URL);
    }

    const EXPECTED_URL: &str = "https://dysmsapi.aliyuncs.com/?Signature=WDXbma%2F4M2BrxZ8DBhpsbjNFJ2E%3D\
        &AccessKeyId=LTAI-test-id&Action=SendSms&Format=JSON&PhoneNumbers=13800138000\
        &RegionId=cn-hangzhou&SignName=Chat%20Mesh%2A%E6%B5%8B%E8%AF%95~%2F\
        &SignatureMethod=HMAC-SHA1&SignatureNonce=0f8fad5b-d9cb-469f-a165-70867728950e\
        &SignatureVersion=1.0&TemplateCode=SMS_123456789\
        &TemplateParam=%7B%22code%22%3A%22123456%22%7D&Timestamp=2024-01-02T03%3A04%3A05Z\
        &Version=2017-05-25";

    #[test]
    fn percent_encoding_follows_aliyun_rules() {
        assert_eq!(percent_encode("a b*c~d-e_f.g+h/é"), "a%20b%2Ac~d-e_f.g%2Bh%2F%C3%A9");
    }

    #[test]
    fn config_debug_redacts_secret() {
        let config = AliyunConfig { access_key_secret: "s3cr3t-value".into(), ..Default::default() };
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cr3t-value") && shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn bad_config_is_rejected_up_front() {
        let ok = || AliyunConfig {
            access_key_id: "id".into(),
            access_key_secret: "secret".into(),
            sign_name: "sign".into(),
            template_code: "SMS_1".into(),
            ..Default::default()
        };
        assert!(AliyunSms::new(ok()).is_ok());
        for bad in [
            AliyunConfig { access_key_secret: " ".into(), ..ok() },
            AliyunConfig { endpoint: "not a url".into(), ..ok() },
            AliyunConfig { endpoint: "ftp://example.com".into(), ..ok() },
            AliyunConfig { timeout: Duration::ZERO, ..ok() },
        ] {
            assert!(matches!(AliyunSms::new(bad), Err(SmsError::Config(_))));
        }
    }

    #[tokio::test]
    async fn log_sender_works_behind_dyn() {
        let sender: Arc<dyn SmsSender> = Arc::new(LogSms);
        sender.send_code("13800138000", "123456").await.unwrap();
    }

    // ----- a fake Aliyun that verifies requests the way the real service does ----------------

    const KEY_ID: &str = "LTAI-fake-id";
    const SECRET: &str = "fake-secret";
    /// Aliyun accepts timestamps within 15 minutes of its clock.
    const MAX_SKEW: Duration = Duration::from_secs(15 * 60);

    #[derive(Default)]
    struct FakeAliyun {
        seen_nonces: Mutex<HashSet<String>>,
        /// (PhoneNumbers, code from TemplateParam) of every accepted send.
        sent: Mutex<Vec<(String, String)>>,
    }

    fn reply(status: StatusCode, code: &str, message: &str) -> axum::response::Response {
        let body = serde_json::json!({
            "Code": code,
            "Message": message,
            "BizId": if code == "OK" { "900619746936498440^0" } else { "" },
            "RequestId": "F655A8D5-B967-440B-8683-DAD6FF8DE990",
        });
        (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
    }

    async fn fake_send_sms(
        State(fake): State<Arc<FakeAliyun>>,
        Query(params): Query<BTreeMap<String, String>>,
    ) -> axum::response::Response {
        let bad = StatusCode::BAD_REQUEST;
        let required = [
            "AccessKeyId",
            "Action",
            "Format",
            "PhoneNumbers",
            "RegionId",
            "SignName",
            "Signature",
            "SignatureMethod",
            "SignatureNonce",
            "SignatureVersion",
            "TemplateCode",
            "TemplateParam",
            "Timestamp",
            "Version",
        ];
        if let Some(missing) = required.iter().find(|k| !params.contains_key(**k)) {
            return reply(bad, "MissingParameter", &format!("{missing} is mandatory"));
        }
        let p = |k: &str| params[k].as_str();
        for (k, want) in [
            ("Action", "SendSms"),
            ("Version", "2017-05-25"),
            ("Format", "JSON"),
            ("SignatureMethod", "HMAC-SHA1"),
            ("SignatureVersion", "1.0"),
        ] {
            if p(k) != want {
                return reply(bad, "InvalidParameter", &format!("{k} must be {want}"));
            }
        }
        if p("AccessKeyId") != KEY_ID {
            return reply(StatusCode::NOT_FOUND, "InvalidAccessKeyId.NotFound", "Specified access key is not found.");
        }
        let fresh = humantime::parse_rfc3339(p("Timestamp")).is_ok_and(|t| {
            let now = SystemTime::now();
            let skew = now.duration_since(t).or_else(|_| t.duration_since(now)).unwrap();
            skew <= MAX_SKEW && p("Timestamp").ends_with('Z')
        });
        if !fresh {
            return reply(bad, "InvalidTimeStamp.Expired", "Specified time stamp or date value is expired.");
        }
        // Recompute the signature from what arrived (decoded by axum), with the secret we know.
        let unsigned = params.iter().filter(|(k, _)| *k != "Signature");
        let sts = string_to_sign(&canonical_query(unsigned.map(|(k, v)| (k.as_str(), v.as_str()))));
        if sign(SECRET, &sts) != p("Signature") {
            let message =
                format!("Specified signature is not matched with our calculation. server string to sign is:{sts}");
            return reply(bad, "SignatureDoesNotMatch", &message);
        }
        // Only a correctly signed request may burn a nonce.
        if !fake.seen_nonces.lock().unwrap().insert(p("SignatureNonce").to_owned()) {
            return reply(bad, "SignatureNonceUsed", "Specified signature nonce was used already.");
        }
        let phone = p("PhoneNumbers");
        if phone.len() != 11 || !phone.bytes().all(|b| b.is_ascii_digit()) {
            // Like Aliyun, business errors come back as HTTP 200 with a non-OK Code.
            return reply(StatusCode::OK, "isv.MOBILE_NUMBER_ILLEGAL", "invalid mobile number");
        }
        let Some(code) = serde_json::from_str::<serde_json::Value>(p("TemplateParam"))
            .ok()
            .and_then(|v| v["code"].as_str().map(str::to_owned))
        else {
            return reply(StatusCode::OK, "isv.TEMPLATE_PARAMS_ILLEGAL", "template params illegal");
        };
        fake.sent.lock().unwrap().push((phone.to_owned(), code));
        reply(StatusCode::OK, "OK", "OK")
    }

    async fn start_fake() -> (Arc<FakeAliyun>, SocketAddr) {
        let fake = Arc::new(FakeAliyun::default());
        let app = axum::Router::new().route("/", axum::routing::get(fake_send_sms)).with_state(fake.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (fake, addr)
    }

    fn client(addr: SocketAddr, secret: &str) -> AliyunSms {
        AliyunSms::new(AliyunConfig {
            endpoint: format!("http://{addr}"),
            access_key_id: KEY_ID.into(),
            access_key_secret: secret.into(),
            // Non-ASCII, space, '*' and '~' must survive encoding, transport and decoding.
            sign_name: "Chat Mesh*测试~".into(),
            template_code: "SMS_123456789".into(),
            timeout: Duration::from_secs(5),
            ..Default::default()
        })
        .unwrap()
    }

    #[tokio::test]
    async fn good_send_is_accepted_and_delivers_the_code() {
        let (fake, addr) = start_fake().await;
        let sender: Arc<dyn SmsSender> = Arc::new(client(addr, SECRET));
        sender.send_code("13800138000", "123456").await.unwrap();
        sender.send_code("13900139000", "654321").await.unwrap(); // fresh nonce each time
        let sent = fake.sent.lock().unwrap().clone();
        assert_eq!(sent, [("13800138000".into(), "123456".into()), ("13900139000".into(), "654321".into())]);
    }

    #[tokio::test]
    async fn wrong_secret_is_rejected_without_leaking_the_code() {
        let (fake, addr) = start_fake().await;
        let err = client(addr, "not-the-secret").send("13800138000", "987123").await.unwrap_err();
        let SmsError::Rejected { code, .. } = &err else { panic!("{err:?}") };
        assert_eq!(code, "SignatureDoesNotMatch");
        // The fake echoes the string-to-sign like Aliyun; it must not reach our error text.
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains("987123") && !shown.contains("13800138000"), "{shown}");
        assert!(fake.sent.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn provider_error_code_is_surfaced() {
        let (_fake, addr) = start_fake().await;
        let err = client(addr, SECRET).send("12345", "123456").await.unwrap_err();
        assert!(
            matches!(&err, SmsError::Rejected { code, message } if code == "isv.MOBILE_NUMBER_ILLEGAL" && message == "invalid mobile number"),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn replayed_request_and_stale_timestamp_are_rejected() {
        let (fake, addr) = start_fake().await;
        let sms = client(addr, SECRET);
        let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        let url = sms.signed_url("13800138000", "123456", &now, "fixed-nonce-1");
        sms.execute(&url, "13800138000", "123456").await.unwrap();
        let replay = sms.execute(&url, "13800138000", "123456").await.unwrap_err();
        assert!(matches!(&replay, SmsError::Rejected { code, .. } if code == "SignatureNonceUsed"), "{replay:?}");

        let stale = SystemTime::now() - Duration::from_secs(3600);
        let stale = humantime::format_rfc3339_seconds(stale).to_string();
        let url = sms.signed_url("13800138000", "123456", &stale, "fixed-nonce-2");
        let err = sms.execute(&url, "13800138000", "123456").await.unwrap_err();
        assert!(matches!(&err, SmsError::Rejected { code, .. } if code == "InvalidTimeStamp.Expired"), "{err:?}");
        assert_eq!(fake.sent.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn unreachable_endpoint_fails_cleanly() {
        // Nothing listens on a port we just released: connection refused.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let err = client(addr, SECRET).send("13800138000", "123456").await.unwrap_err();
        let SmsError::Transport(text) = &err else { panic!("{err:?}") };
        assert!(!text.contains("123456") && !text.contains("127.0.0.1"), "{text}");
    }

    #[tokio::test]
    async fn silent_endpoint_times_out() {
        // The kernel completes the TCP handshake via the backlog, but nobody ever answers.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sms = AliyunSms::new(AliyunConfig {
            timeout: Duration::from_millis(300),
            ..client(silent.local_addr().unwrap(), SECRET).config
        })
        .unwrap();
        let started = std::time::Instant::now();
        let err = sms.send("13800138000", "123456").await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
        let SmsError::Transport(text) = &err else { panic!("{err:?}") };
        assert!(text.contains("timed out") && !text.contains("123456"), "{text}");
    }
}
