//! Baidu short-speech recognition (标准版, REST), as the seed used it.
//!
//! Relied on (Baidu's docs, as found with the docs search):
//! - Token: `POST https://aip.baidubce.com/oauth/2.0/token?grant_type=client_credentials&
//!   client_id=<API Key>&client_secret=<Secret Key>` answers `{"access_token", "expires_in"
//!   (seconds, about a month), ...}` or `{"error": "invalid_client", "error_description":
//!   "unknown client id" | "Client authentication failed"}`
//!   (Baidu's "鉴权认证机制", https://cloud.baidu.com/doc/NLP/s/Tk6z52d7c).
//! - Recognition: `POST https://vop.baidu.com/server_api`, `Content-Type: application/json`,
//!   body `{"format": "pcm", "rate": 16000, "channel": 1, "cuid", "token", "dev_pid": 1537,
//!   "speech": base64, "len": byte length before base64}`; answer `{"err_no": 0, "err_msg":
//!   "success.", "result": ["best candidate"], "sn", "corpus_no"}` or `{"err_no": 33xx,
//!   "err_msg", "sn"}` ("短语音识别", https://cloud.baidu.com/doc/qianfan-api/s/mm7viqkmz).
//! - Error codes (https://cloud.baidu.com/doc/SPEECH/s/lk38lxosv): 3300 bad parameters, 3301
//!   audio quality too poor / no clear speech, 3302 authentication failed (token invalid or
//!   expired, or quota), 3303/3307/3313/3315 server side, 3304 concurrency limit, 3305 daily
//!   limit, 3308 longer than 60 s, 3309 audio data problem, 3310 file too large, 3311 bad rate,
//!   3312 bad format, 3314 too short, 3316 conversion to PCM failed.
//!
//! The token is cached and fetched again shortly before `expires_in` runs out (a tenth of its
//! life early, at most a day), once for all concurrent requests; a 3302 answer drops the cached
//! token and the request is retried once with a fresh one. Neither the secret nor a token is
//! ever logged or put into an error.

use std::fmt;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::Deserialize;

use crate::audio::{Pcm16k, SAMPLE_RATE};
use crate::error::SpeechError;
use crate::{ReadyFuture, RecognizeFuture, Recognizer, Transcript, endpoint, transport_error};

pub const BAIDU_TOKEN_URL: &str = "https://aip.baidubce.com/oauth/2.0/token";
pub const BAIDU_ASR_URL: &str = "https://vop.baidu.com/server_api";
/// Mandarin with punctuation (the "输入法模型").
pub const BAIDU_DEFAULT_DEV_PID: u32 = 1537;

/// Baidu settings as flags / `CHATMESH_BAIDU_*` env (the keys normally from a Secret).
#[derive(Clone, clap::Args)]
pub struct BaiduArgs {
    /// Baidu application API Key (client_id).
    #[arg(long, env = "CHATMESH_BAIDU_API_KEY", default_value = "", hide_env_values = true)]
    pub baidu_api_key: String,
    /// Baidu application Secret Key (client_secret).
    #[arg(long, env = "CHATMESH_BAIDU_SECRET_KEY", default_value = "", hide_env_values = true)]
    pub baidu_secret_key: String,
    #[arg(long, env = "CHATMESH_BAIDU_TOKEN_URL", default_value = BAIDU_TOKEN_URL)]
    pub baidu_token_url: String,
    #[arg(long, env = "CHATMESH_BAIDU_ASR_URL", default_value = BAIDU_ASR_URL)]
    pub baidu_asr_url: String,
    /// Recognition model: 1537 Mandarin, 1737 English, 1637 Cantonese, 1837 Sichuanese.
    #[arg(long, env = "CHATMESH_BAIDU_DEV_PID", default_value_t = BAIDU_DEFAULT_DEV_PID)]
    pub baidu_dev_pid: u32,
    /// `cuid` sent with each request: names this client in Baidu's logs.
    #[arg(long, env = "CHATMESH_BAIDU_CUID", default_value = "chatmesh")]
    pub baidu_cuid: String,
}

impl fmt::Debug for BaiduArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.config(Duration::ZERO).fmt(f)
    }
}

impl BaiduArgs {
    pub fn config(&self, timeout: Duration) -> BaiduConfig {
        BaiduConfig {
            token_url: self.baidu_token_url.clone(),
            asr_url: self.baidu_asr_url.clone(),
            api_key: self.baidu_api_key.clone(),
            secret_key: self.baidu_secret_key.clone(),
            dev_pid: self.baidu_dev_pid,
            cuid: self.baidu_cuid.clone(),
            timeout,
        }
    }
}

#[derive(Clone)]
pub struct BaiduConfig {
    pub token_url: String,
    pub asr_url: String,
    pub api_key: String,
    pub secret_key: String,
    pub dev_pid: u32,
    pub cuid: String,
    /// Whole-request timeout of each HTTP call.
    pub timeout: Duration,
}

// Hand-written so that logging a config can never print the secret.
impl fmt::Debug for BaiduConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BaiduConfig")
            .field("token_url", &self.token_url)
            .field("asr_url", &self.asr_url)
            .field("api_key", &self.api_key)
            .field("secret_key", &"<redacted>")
            .field("dev_pid", &self.dev_pid)
            .field("cuid", &self.cuid)
            .field("timeout", &self.timeout)
            .finish()
    }
}

struct CachedToken {
    value: String,
    refresh_at: Instant,
}

pub struct BaiduAsr {
    config: BaiduConfig,
    http: reqwest::Client,
    token: tokio::sync::Mutex<Option<CachedToken>>,
}

impl fmt::Debug for BaiduAsr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BaiduAsr").field("config", &self.config).finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct TokenReply {
    access_token: Option<String>,
    expires_in: Option<u64>,
    error: Option<String>,
    error_description: Option<String>,
}

#[derive(Deserialize)]
struct AsrReply {
    err_no: i64,
    #[serde(default)]
    err_msg: String,
    #[serde(default)]
    result: Vec<String>,
    #[serde(default)]
    sn: String,
}

/// When to fetch a token that lives `expires_in`: a tenth of its life early, at most a day.
fn refresh_after(expires_in: Duration) -> Duration {
    expires_in - (expires_in / 10).min(Duration::from_secs(24 * 3600))
}

impl BaiduAsr {
    /// Checks the configuration up front so a bad deployment fails at startup.
    pub fn new(mut config: BaiduConfig) -> Result<Self, SpeechError> {
        for (name, value) in
            [("api key (--baidu-api-key)", &config.api_key), ("secret key (--baidu-secret-key)", &config.secret_key)]
        {
            if value.trim().is_empty() {
                return Err(SpeechError::Config(format!("baidu {name} is empty")));
            }
        }
        if config.cuid.is_empty() || config.cuid.len() > 60 {
            return Err(SpeechError::Config("baidu cuid must be 1 to 60 characters".into()));
        }
        if config.timeout.is_zero() {
            return Err(SpeechError::Config("speech timeout is zero".into()));
        }
        config.token_url = endpoint("baidu token URL", &config.token_url)?;
        config.asr_url = endpoint("baidu ASR URL", &config.asr_url)?;
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .build()
            .map_err(|e| SpeechError::Config(format!("http client: {e}")))?;
        Ok(Self { config, http, token: tokio::sync::Mutex::new(None) })
    }

    /// A valid token: the cached one, or a new one (one fetch at a time; the others wait for it).
    async fn token(&self) -> Result<String, SpeechError> {
        let mut slot = self.token.lock().await;
        if let Some(token) = slot.as_ref().filter(|t| Instant::now() < t.refresh_at) {
            return Ok(token.value.clone());
        }
        let fetched = self.fetch_token().await?;
        let value = fetched.value.clone();
        *slot = Some(fetched);
        Ok(value)
    }

    /// Forgets `stale` (unless another request already replaced it).
    async fn invalidate(&self, stale: &str) {
        let mut slot = self.token.lock().await;
        if slot.as_ref().is_some_and(|t| t.value == stale) {
            *slot = None;
        }
    }

    async fn fetch_token(&self) -> Result<CachedToken, SpeechError> {
        let c = &self.config;
        let asked = Instant::now();
        let response = self
            .http
            .post(&c.token_url)
            .query(&[
                ("grant_type", "client_credentials"),
                ("client_id", c.api_key.as_str()),
                ("client_secret", c.secret_key.as_str()),
            ])
            .send()
            .await
            .map_err(|e| transport_error(e, c.timeout))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| transport_error(e, c.timeout))?;
        let reply: TokenReply = serde_json::from_slice(&body)
            .map_err(|_| SpeechError::Transport(format!("unreadable token reply from Baidu (HTTP {status})")))?;
        match reply {
            TokenReply { access_token: Some(value), expires_in: Some(expires_in), .. } if !value.is_empty() => {
                tracing::info!(expires_in, "new Baidu access token");
                let refresh_at = asked + refresh_after(Duration::from_secs(expires_in));
                Ok(CachedToken { value, refresh_at })
            }
            TokenReply { error, error_description, .. } => {
                let code = error.unwrap_or_else(|| format!("HTTP {}", status.as_u16()));
                let message = error_description.unwrap_or_else(|| "no access_token in the token reply".into());
                tracing::error!(%code, %message, "Baidu refused an access token");
                Err(SpeechError::Provider { provider: "baidu", code, message: format!("access token: {message}") })
            }
        }
    }

    async fn call(&self, token: &str, speech: &str, len: usize) -> Result<AsrReply, SpeechError> {
        let c = &self.config;
        let body = serde_json::json!({
            "format": "pcm",
            "rate": SAMPLE_RATE,
            "channel": 1,
            "cuid": c.cuid,
            "token": token,
            "dev_pid": c.dev_pid,
            "speech": speech,
            "len": len,
        });
        let response = self
            .http
            .post(&c.asr_url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| transport_error(e, c.timeout))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| transport_error(e, c.timeout))?;
        serde_json::from_slice(&body)
            .map_err(|_| SpeechError::Transport(format!("unreadable recognition reply from Baidu (HTTP {status})")))
    }

    pub async fn recognize(&self, audio: &Pcm16k) -> Result<Transcript, SpeechError> {
        let pcm = audio.to_le_bytes();
        let speech = base64::engine::general_purpose::STANDARD.encode(&pcm);
        let mut retried = false;
        loop {
            let token = self.token().await?;
            let reply = self.call(&token, &speech, pcm.len()).await?;
            match reply.err_no {
                0 => {
                    let text = reply.result.into_iter().next().unwrap_or_default();
                    return Ok(Transcript { text, confidence: None });
                }
                // The token expired early or was revoked: once more with a new one.
                3302 if !retried => {
                    tracing::warn!(sn = %reply.sn, "Baidu refused the access token; fetching a new one");
                    self.invalidate(&token).await;
                    retried = true;
                }
                code => {
                    let err = classify(code, &reply.err_msg);
                    if matches!(err, SpeechError::Unrecognizable(_)) {
                        tracing::info!(code, message = %reply.err_msg, sn = %reply.sn, "Baidu could not recognize the speech");
                    } else {
                        tracing::error!(code, message = %reply.err_msg, sn = %reply.sn, "Baidu recognition failed");
                    }
                    return Err(err);
                }
            }
        }
    }
}

/// Baidu's error codes: the audio's fault (the client sees why), or ours/theirs (internal).
fn classify(code: i64, message: &str) -> SpeechError {
    let audio = |why: &str| SpeechError::Unrecognizable(format!("{why} (baidu {code}: {message})"));
    match code {
        3301 => audio("audio quality too poor or no clear speech"),
        3308 => audio("speech too long"),
        3309 | 3316 => audio("audio data could not be converted"),
        3310 => audio("audio too large"),
        3314 => audio("speech too short"),
        3304 | 3305 => SpeechError::Provider {
            provider: "baidu",
            code: code.to_string(),
            message: format!("request limit exceeded: {message}"),
        },
        _ => SpeechError::Provider { provider: "baidu", code: code.to_string(), message: message.to_string() },
    }
}

impl Recognizer for BaiduAsr {
    fn name(&self) -> &'static str {
        "baidu"
    }

    fn recognize<'a>(&'a self, audio: &'a Pcm16k) -> RecognizeFuture<'a> {
        Box::pin(BaiduAsr::recognize(self, audio))
    }

    /// Complete settings (checked by `new`) are all that can be known without spending quota.
    fn ready(&self) -> ReadyFuture<'_> {
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};

    use axum::body::Bytes;
    use axum::extract::{Query, State};
    use axum::http::{HeaderMap, StatusCode, header};
    use axum::response::IntoResponse;

    const API_KEY: &str = "Va5yQRHlA4Fq5eR3LT0vuXV4";
    const SECRET: &str = "0rDSjzQ20XUj5itV6WRtznPQSzr5pVw2";

    /// A fake of Baidu's two endpoints, holding to their documented behaviour.
    struct FakeBaidu {
        /// Lifetime of issued tokens, and how long they really last (shorter: "revoked").
        expires_in: u64,
        real_life: Duration,
        tokens: Mutex<HashMap<String, Instant>>,
        tokens_issued: Mutex<u32>,
        /// Every 3302 answered.
        auth_failures: Mutex<u32>,
        /// The PCM of every recognized request.
        heard: Mutex<Vec<Vec<u8>>>,
        /// What "recognition" returns; or an error code to answer with.
        transcript: String,
        fail_with: Mutex<Option<(i64, &'static str)>>,
    }

    impl FakeBaidu {
        fn new(expires_in: u64, real_life: Duration) -> Self {
            FakeBaidu {
                expires_in,
                real_life,
                tokens: Mutex::default(),
                tokens_issued: Mutex::new(0),
                auth_failures: Mutex::new(0),
                heard: Mutex::default(),
                transcript: "今天天气怎么样".into(),
                fail_with: Mutex::new(None),
            }
        }
    }

    fn json(status: StatusCode, body: serde_json::Value) -> axum::response::Response {
        (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
    }

    async fn fake_token(
        State(fake): State<Arc<FakeBaidu>>,
        Query(q): Query<HashMap<String, String>>,
    ) -> axum::response::Response {
        if q.get("grant_type").map(String::as_str) != Some("client_credentials") {
            let body = serde_json::json!({"error": "unsupported_grant_type", "error_description": "The authorization grant type is not supported"});
            return json(StatusCode::BAD_REQUEST, body);
        }
        if q.get("client_id").map(String::as_str) != Some(API_KEY) {
            let body = serde_json::json!({"error": "invalid_client", "error_description": "unknown client id"});
            return json(StatusCode::UNAUTHORIZED, body);
        }
        if q.get("client_secret").map(String::as_str) != Some(SECRET) {
            let body =
                serde_json::json!({"error": "invalid_client", "error_description": "Client authentication failed"});
            return json(StatusCode::UNAUTHORIZED, body);
        }
        let n = {
            let mut issued = fake.tokens_issued.lock().unwrap();
            *issued += 1;
            *issued
        };
        let token = format!("24.{n:032x}.{}.1485516651.282335-8574074", fake.expires_in);
        fake.tokens.lock().unwrap().insert(token.clone(), Instant::now() + fake.real_life);
        json(
            StatusCode::OK,
            serde_json::json!({
                "refresh_token": "25.b55fe1d287227ca97aab219bb249b8ab.315360000.1798284651.282335-8574074",
                "expires_in": fake.expires_in,
                "scope": "public audio_voice_assistant_get wise_adapt",
                "session_key": "9mzdDZXu3dENdFZQurfg0Vz8slgSgvvOAUebNFzyzcpQ5EnbxbF",
                "access_token": token,
                "session_secret": "dfac94a3489fe9fca7c3221cbf7525ff",
            }),
        )
    }

    async fn fake_asr(State(fake): State<Arc<FakeBaidu>>, headers: HeaderMap, body: Bytes) -> axum::response::Response {
        let err = |code: i64, msg: &str| {
            json(StatusCode::OK, serde_json::json!({"err_no": code, "err_msg": msg, "sn": "82847836171500868330"}))
        };
        if headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) != Some("application/json") {
            return err(3300, "param format and content length invalid.");
        }
        let Ok(req) = serde_json::from_slice::<serde_json::Value>(&body) else {
            return err(3300, "speech json invalid.");
        };
        for field in ["format", "rate", "channel", "cuid", "token", "speech", "len"] {
            if req.get(field).is_none() {
                return err(3300, &format!("param {field} missing."));
            }
        }
        if !["pcm", "wav", "amr", "m4a"].contains(&req["format"].as_str().unwrap_or("")) {
            return err(3312, "param format invalid.");
        }
        if req["rate"] != 16000 && req["rate"] != 8000 {
            return err(3311, "param rate invalid.");
        }
        let token = req["token"].as_str().unwrap_or("");
        let valid = fake.tokens.lock().unwrap().get(token).is_some_and(|&end| Instant::now() < end);
        if !valid {
            *fake.auth_failures.lock().unwrap() += 1;
            return err(3302, "authentication failed.");
        }
        let Some(speech) =
            req["speech"].as_str().and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
        else {
            return err(3300, "param speech invalid.");
        };
        if req["len"].as_u64() != Some(speech.len() as u64) {
            return err(3300, "param format and content length invalid.");
        }
        if speech.len() <= 4 {
            return err(3314, "audio too short.");
        }
        if let Some((code, msg)) = *fake.fail_with.lock().unwrap() {
            return err(code, msg);
        }
        fake.heard.lock().unwrap().push(speech);
        json(
            StatusCode::OK,
            serde_json::json!({"corpus_no": "6433214037620997779", "err_msg": "success.", "err_no": 0,
                "result": [fake.transcript], "sn": "371191073711497849365"}),
        )
    }

    async fn start(fake: FakeBaidu) -> (Arc<FakeBaidu>, SocketAddr) {
        let fake = Arc::new(fake);
        let app = axum::Router::new()
            .route("/oauth/2.0/token", axum::routing::post(fake_token))
            .route("/server_api", axum::routing::post(fake_asr))
            .with_state(fake.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (fake, addr)
    }

    fn config(addr: SocketAddr, secret: &str) -> BaiduConfig {
        BaiduConfig {
            token_url: format!("http://{addr}/oauth/2.0/token"),
            asr_url: format!("http://{addr}/server_api"),
            api_key: API_KEY.into(),
            secret_key: secret.into(),
            dev_pid: BAIDU_DEFAULT_DEV_PID,
            cuid: "chatmesh-test".into(),
            timeout: Duration::from_secs(5),
        }
    }

    fn speech() -> Pcm16k {
        Pcm16k::from_samples((0..1600).map(|i| ((i * 37) % 2000 - 1000) as i16).collect())
    }

    #[tokio::test]
    async fn recognizes_with_one_cached_token_and_sends_the_pcm_unchanged() {
        let (fake, addr) = start(FakeBaidu::new(2_592_000, Duration::from_secs(3600))).await;
        let asr: Arc<dyn Recognizer> = Arc::new(BaiduAsr::new(config(addr, SECRET)).unwrap());
        for _ in 0..3 {
            let t = asr.recognize(&speech()).await.unwrap();
            assert_eq!(t.text, "今天天气怎么样");
        }
        assert_eq!(*fake.tokens_issued.lock().unwrap(), 1);
        asr.ready().await.unwrap();
        let heard = fake.heard.lock().unwrap();
        assert_eq!(heard.len(), 3);
        assert_eq!(heard[0], speech().to_le_bytes());
    }

    #[tokio::test]
    async fn token_is_refreshed_before_it_expires() {
        // Tokens live 2 s: refreshed after 1.8 s, so an expired token is never sent.
        let (fake, addr) = start(FakeBaidu::new(2, Duration::from_secs(2))).await;
        let asr = BaiduAsr::new(config(addr, SECRET)).unwrap();
        asr.recognize(&speech()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1900)).await;
        asr.recognize(&speech()).await.unwrap();
        assert_eq!(*fake.tokens_issued.lock().unwrap(), 2);
        assert_eq!(*fake.auth_failures.lock().unwrap(), 0);
    }

    #[tokio::test]
    async fn a_token_rejected_early_is_replaced_and_the_request_retried_once() {
        // The fake says a month but lets tokens die after 300 ms, as a revoked token would.
        let (fake, addr) = start(FakeBaidu::new(2_592_000, Duration::from_millis(300))).await;
        let asr = BaiduAsr::new(config(addr, SECRET)).unwrap();
        asr.recognize(&speech()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        let t = asr.recognize(&speech()).await.unwrap();
        assert_eq!(t.text, "今天天气怎么样");
        assert_eq!(*fake.tokens_issued.lock().unwrap(), 2);
        assert_eq!(*fake.auth_failures.lock().unwrap(), 1);
    }

    #[tokio::test]
    async fn persistent_auth_failure_is_an_internal_error_after_one_retry() {
        // Tokens dead on arrival: 3302 every time (what Baidu also says when quota is gone).
        let (fake, addr) = start(FakeBaidu::new(2_592_000, Duration::ZERO)).await;
        let asr = BaiduAsr::new(config(addr, SECRET)).unwrap();
        let err = asr.recognize(&speech()).await.unwrap_err();
        assert!(matches!(&err, SpeechError::Provider { code, .. } if code == "3302"), "{err:?}");
        assert_eq!(err.to_string(), "baidu error 3302: authentication failed.");
        assert!(chatmesh_common::grpc::ServiceFailure::is_internal(&err));
        assert_eq!(*fake.tokens_issued.lock().unwrap(), 2);
        assert_eq!(*fake.auth_failures.lock().unwrap(), 2);
    }

    #[tokio::test]
    async fn wrong_credentials_are_reported_without_the_secret() {
        let (fake, addr) = start(FakeBaidu::new(2_592_000, Duration::from_secs(3600))).await;
        let err = BaiduAsr::new(config(addr, "not-the-secret-xyz")).unwrap().recognize(&speech()).await.unwrap_err();
        let shown = format!("{err} {err:?}");
        assert!(shown.contains("invalid_client") && shown.contains("Client authentication failed"), "{shown}");
        assert!(!shown.contains("not-the-secret-xyz"), "{shown}");
        let mut wrong_key = config(addr, SECRET);
        wrong_key.api_key = "nobody".into();
        let err = BaiduAsr::new(wrong_key).unwrap().recognize(&speech()).await.unwrap_err();
        assert!(err.to_string().contains("unknown client id"), "{err}");
        assert_eq!(*fake.tokens_issued.lock().unwrap(), 0);
        let asr = BaiduAsr::new(config(addr, SECRET)).unwrap();
        assert!(!format!("{asr:?}").contains(SECRET));
    }

    #[tokio::test]
    async fn audio_errors_reach_the_client_and_service_errors_do_not() {
        let (fake, addr) = start(FakeBaidu::new(2_592_000, Duration::from_secs(3600))).await;
        let asr = BaiduAsr::new(config(addr, SECRET)).unwrap();
        *fake.fail_with.lock().unwrap() = Some((3301, "recognition error."));
        let err = asr.recognize(&speech()).await.unwrap_err();
        assert!(matches!(err, SpeechError::Unrecognizable(_)), "{err:?}");
        assert_eq!(
            err.to_string(),
            "speech could not be recognized: audio quality too poor or no clear speech (baidu 3301: recognition error.)"
        );
        *fake.fail_with.lock().unwrap() = Some((3303, "backend error."));
        let err = asr.recognize(&speech()).await.unwrap_err();
        assert!(chatmesh_common::grpc::ServiceFailure::is_internal(&err), "{err:?}");
        assert_eq!(err.to_string(), "baidu error 3303: backend error.");
        *fake.fail_with.lock().unwrap() = None;
        // Four bytes or fewer: Baidu's own "too short".
        let err = asr.recognize(&Pcm16k::from_samples(vec![1, 2])).await.unwrap_err();
        assert!(err.to_string().contains("speech too short (baidu 3314"), "{err}");
    }

    #[tokio::test]
    async fn silent_endpoint_times_out() {
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut c = config(silent.local_addr().unwrap(), SECRET);
        c.timeout = Duration::from_millis(300);
        let started = Instant::now();
        let err = BaiduAsr::new(c).unwrap().recognize(&speech()).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
        assert!(matches!(err, SpeechError::Timeout(_)), "{err:?}");
    }

    #[test]
    fn tokens_are_refreshed_a_tenth_early_at_most_a_day() {
        assert_eq!(refresh_after(Duration::from_secs(10)), Duration::from_secs(9));
        assert_eq!(refresh_after(Duration::from_secs(2_592_000)), Duration::from_secs(2_592_000 - 86_400));
    }
}
