//! OpenAI-compatible transcription: `POST {base}/v1/audio/transcriptions`, `multipart/form-data`
//! with `file` (our audio as a 16 kHz mono WAV), `model`, `response_format=json` and optionally
//! `language`; the answer is `{"text": "..."}`. Errors are `{"error": {"message", "type",
//! "code"}}` with a 4xx/5xx status (OpenAI), or `{"error": "..."}` (some self-hosted servers).
//! OpenAI itself wants `Authorization: Bearer <key>`; faster-whisper servers (speaches) and
//! whisper.cpp's server (`--inference-path /v1/audio/transcriptions`) usually need no key, so
//! none is sent when none is configured.
//!
//! The multipart body is written here (a few lines) rather than by reqwest's `multipart`
//! feature, so the workspace keeps one reqwest feature set.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use crate::audio::Pcm16k;
use crate::error::SpeechError;
use crate::{ReadyFuture, RecognizeFuture, Recognizer, Transcript, endpoint, transport_error};

pub const OPENAI_DEFAULT_BASE_URL: &str = "https://api.openai.com";

/// OpenAI-compatible settings as flags / `CHATMESH_OPENAI_*` env (the key normally from a Secret).
#[derive(Clone, clap::Args)]
pub struct OpenAiArgs {
    /// Server base URL (`/v1/audio/transcriptions` is appended; a trailing `/v1` is fine too).
    #[arg(long, env = "CHATMESH_OPENAI_BASE_URL", default_value = OPENAI_DEFAULT_BASE_URL)]
    pub openai_base_url: String,
    /// Bearer key; empty: no Authorization header (self-hosted servers).
    #[arg(long, env = "CHATMESH_OPENAI_API_KEY", default_value = "", hide_env_values = true)]
    pub openai_api_key: String,
    /// Model name the server knows (`whisper-1` at OpenAI; e.g. `Systran/faster-whisper-base`).
    #[arg(long, env = "CHATMESH_OPENAI_MODEL", default_value = "whisper-1")]
    pub openai_model: String,
}

impl fmt::Debug for OpenAiArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.config(None, Duration::ZERO).fmt(f)
    }
}

impl OpenAiArgs {
    pub fn config(&self, language: Option<String>, timeout: Duration) -> OpenAiConfig {
        OpenAiConfig {
            base_url: self.openai_base_url.clone(),
            api_key: self.openai_api_key.clone(),
            model: self.openai_model.clone(),
            language,
            timeout,
        }
    }
}

#[derive(Clone)]
pub struct OpenAiConfig {
    pub base_url: String,
    pub api_key: String,
    pub model: String,
    pub language: Option<String>,
    pub timeout: Duration,
}

impl fmt::Debug for OpenAiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = if self.api_key.is_empty() { "" } else { "<redacted>" };
        f.debug_struct("OpenAiConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &key)
            .field("model", &self.model)
            .field("language", &self.language)
            .field("timeout", &self.timeout)
            .finish()
    }
}

#[derive(Debug)]
pub struct OpenAiAsr {
    config: OpenAiConfig,
    url: String,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct Reply {
    text: Option<String>,
    error: Option<ErrorBody>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ErrorBody {
    Detailed {
        message: String,
        #[serde(default)]
        code: Option<serde_json::Value>,
        #[serde(default, rename = "type")]
        kind: Option<String>,
    },
    Text(String),
}

impl OpenAiAsr {
    pub fn new(config: OpenAiConfig) -> Result<Self, SpeechError> {
        let base = endpoint("openai base URL", &config.base_url)?;
        let url = if base.ends_with("/v1") {
            format!("{base}/audio/transcriptions")
        } else {
            format!("{base}/v1/audio/transcriptions")
        };
        let plain = |v: &str| !v.is_empty() && !v.contains(['\r', '\n', '"']);
        if !plain(&config.model) {
            return Err(SpeechError::Config(format!("openai model {:?} is empty or not a plain name", config.model)));
        }
        if config.language.as_deref().is_some_and(|l| !plain(l)) {
            return Err(SpeechError::Config("speech language is not a plain code".into()));
        }
        if config.api_key.contains(['\r', '\n']) {
            return Err(SpeechError::Config("openai api key contains a line break".into()));
        }
        if config.timeout.is_zero() {
            return Err(SpeechError::Config("speech timeout is zero".into()));
        }
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .build()
            .map_err(|e| SpeechError::Config(format!("http client: {e}")))?;
        Ok(Self { config, url, http })
    }

    pub async fn recognize(&self, audio: &Pcm16k) -> Result<Transcript, SpeechError> {
        let boundary = format!("chatmesh-{}", uuid::Uuid::new_v4().simple());
        let mut fields = vec![("model", self.config.model.as_str()), ("response_format", "json")];
        if let Some(language) = &self.config.language {
            fields.push(("language", language.as_str()));
        }
        let body = multipart(&boundary, &audio.to_wav(), &fields);
        let mut request = self
            .http
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, format!("multipart/form-data; boundary={boundary}"))
            .body(body);
        if !self.config.api_key.is_empty() {
            request = request.bearer_auth(&self.config.api_key);
        }
        let timeout = self.config.timeout;
        let response = request.send().await.map_err(|e| transport_error(e, timeout))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| transport_error(e, timeout))?;
        let reply: Option<Reply> = serde_json::from_slice(&body).ok();
        match reply {
            Some(Reply { text: Some(text), error: None }) if status.is_success() => {
                Ok(Transcript { text: text.trim().to_string(), confidence: None })
            }
            Some(Reply { error: Some(error), .. }) => Err(classify(status, error)),
            _ => Err(SpeechError::Transport(format!("unreadable transcription reply (HTTP {status})"))),
        }
    }
}

fn classify(status: reqwest::StatusCode, error: ErrorBody) -> SpeechError {
    let (message, code) = match error {
        ErrorBody::Detailed { message, code, kind } => {
            let code = match code {
                Some(serde_json::Value::String(c)) => c,
                _ => kind.unwrap_or_default(),
            };
            (message, code)
        }
        ErrorBody::Text(message) => (message, String::new()),
    };
    tracing::warn!(http_status = status.as_u16(), %code, %message, "transcription server refused");
    if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        return SpeechError::Busy;
    }
    if code == "audio_too_short" || (status == reqwest::StatusCode::BAD_REQUEST && message.contains("too short")) {
        return SpeechError::Unrecognizable(message);
    }
    let code =
        if code.is_empty() { format!("HTTP {}", status.as_u16()) } else { format!("HTTP {} {code}", status.as_u16()) };
    SpeechError::Provider { provider: "openai", code, message }
}

/// A `multipart/form-data` body: the audio as `file` (speech.wav), then the text fields.
fn multipart(boundary: &str, wav: &[u8], fields: &[(&str, &str)]) -> Vec<u8> {
    let mut body = Vec::with_capacity(wav.len() + 512);
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"speech.wav\"\r\n\
             Content-Type: audio/wav\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(wav);
    body.extend_from_slice(b"\r\n");
    for (name, value) in fields {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n").as_bytes(),
        );
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    body
}

impl Recognizer for OpenAiAsr {
    fn name(&self) -> &'static str {
        "openai"
    }

    fn recognize<'a>(&'a self, audio: &'a Pcm16k) -> RecognizeFuture<'a> {
        Box::pin(OpenAiAsr::recognize(self, audio))
    }

    /// Complete settings (checked by `new`) are all that can be known without a request.
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
    use std::time::Instant;

    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode, header};
    use axum::response::IntoResponse;

    const KEY: &str = "sk-test-0123456789abcdef";

    /// One multipart part: its headers' name/filename/content type, and its bytes.
    struct Part {
        name: String,
        filename: Option<String>,
        content_type: Option<String>,
        data: Vec<u8>,
    }

    /// A strict little multipart/form-data parser (RFC 7578), enough for the fake.
    fn parse_multipart(content_type: &str, body: &[u8]) -> Result<Vec<Part>, String> {
        let boundary = content_type
            .strip_prefix("multipart/form-data; boundary=")
            .ok_or_else(|| format!("content type {content_type:?}"))?;
        let delimiter = format!("--{boundary}").into_bytes();
        let find = |hay: &[u8], needle: &[u8], from: usize| {
            hay[from..].windows(needle.len()).position(|w| w == needle).map(|p| p + from)
        };
        let mut parts = Vec::new();
        let mut at = find(body, &delimiter, 0).ok_or("no opening boundary")? + delimiter.len();
        loop {
            if body[at..].starts_with(b"--") {
                return Ok(parts); // closing delimiter
            }
            if !body[at..].starts_with(b"\r\n") {
                return Err("boundary not followed by CRLF".into());
            }
            let head_start = at + 2;
            let head_end = find(body, b"\r\n\r\n", head_start).ok_or("part headers not terminated")?;
            let head = std::str::from_utf8(&body[head_start..head_end]).map_err(|e| e.to_string())?;
            let next_delim = [b"\r\n".as_slice(), &delimiter].concat();
            let data_end = find(body, &next_delim, head_end + 4).ok_or("part not terminated")?;
            let mut part = Part {
                name: String::new(),
                filename: None,
                content_type: None,
                data: body[head_end + 4..data_end].to_vec(),
            };
            for line in head.split("\r\n") {
                let (k, v) = line.split_once(": ").ok_or("bad part header")?;
                match k.to_ascii_lowercase().as_str() {
                    "content-disposition" => {
                        for attr in v.split("; ").skip(1) {
                            let (ak, av) = attr.split_once('=').ok_or("bad disposition")?;
                            let av = av.trim_matches('"').to_string();
                            match ak {
                                "name" => part.name = av,
                                "filename" => part.filename = Some(av),
                                _ => {}
                            }
                        }
                    }
                    "content-type" => part.content_type = Some(v.to_string()),
                    _ => {}
                }
            }
            parts.push(part);
            at = data_end + next_delim.len();
        }
    }

    /// What the fake accepted: model, language and the WAV file.
    type Upload = (String, Option<String>, Vec<u8>);

    #[derive(Default)]
    struct FakeServer {
        require_key: bool,
        seen: Mutex<Vec<Upload>>,
        auth_headers: Mutex<Vec<Option<String>>>,
    }

    fn openai_error(status: StatusCode, message: &str, kind: &str, code: Option<&str>) -> axum::response::Response {
        let body = serde_json::json!({"error": {"message": message, "type": kind, "param": null, "code": code}});
        (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
    }

    async fn fake_transcriptions(
        State(fake): State<Arc<FakeServer>>,
        headers: HeaderMap,
        body: Bytes,
    ) -> axum::response::Response {
        let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_string);
        fake.auth_headers.lock().unwrap().push(auth.clone());
        if fake.require_key && auth.as_deref() != Some(&format!("Bearer {KEY}")) {
            let message = "Incorrect API key provided: sk-wrong. You can find your API key at https://platform.openai.com/account/api-keys.";
            return openai_error(StatusCode::UNAUTHORIZED, message, "invalid_request_error", Some("invalid_api_key"));
        }
        let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        let parts = match parse_multipart(content_type, &body) {
            Ok(parts) => parts,
            Err(why) => return openai_error(StatusCode::BAD_REQUEST, &why, "invalid_request_error", None),
        };
        let field = |name: &str| parts.iter().find(|p| p.name == name);
        let text = |name: &str| field(name).map(|p| String::from_utf8_lossy(&p.data).into_owned());
        let Some(file) = field("file") else {
            return openai_error(StatusCode::BAD_REQUEST, "you must provide a file", "invalid_request_error", None);
        };
        let Some(model) = text("model") else {
            return openai_error(
                StatusCode::BAD_REQUEST,
                "you must provide a model parameter",
                "invalid_request_error",
                None,
            );
        };
        if model != "whisper-1" {
            let message = format!("The model `{model}` does not exist or you do not have access to it.");
            return openai_error(StatusCode::NOT_FOUND, &message, "invalid_request_error", Some("model_not_found"));
        }
        if text("response_format").as_deref() != Some("json") || file.filename.as_deref() != Some("speech.wav") {
            return openai_error(StatusCode::BAD_REQUEST, "unexpected request shape", "invalid_request_error", None);
        }
        let wav = &file.data;
        let valid_wav = wav.len() >= 44
            && &wav[..4] == b"RIFF"
            && &wav[8..12] == b"WAVE"
            && file.content_type.as_deref() == Some("audio/wav");
        if !valid_wav {
            let message = "Invalid file format. Supported formats: ['flac', 'm4a', 'mp3', 'mp4', 'mpeg', 'mpga', 'oga', 'ogg', 'wav', 'webm']";
            return openai_error(StatusCode::BAD_REQUEST, message, "invalid_request_error", None);
        }
        // 16 kHz mono 16-bit: 3200 bytes per 0.1 s.
        if wav.len() - 44 < 3_200 {
            let message = "Audio file is too short. Minimum audio length is 0.1 seconds.";
            return openai_error(StatusCode::BAD_REQUEST, message, "invalid_request_error", Some("audio_too_short"));
        }
        fake.seen.lock().unwrap().push((model, text("language"), wav.clone()));
        let body = serde_json::json!({"text": " Hello from the fake transcription server. "});
        (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
    }

    async fn start(require_key: bool) -> (Arc<FakeServer>, SocketAddr) {
        let fake = Arc::new(FakeServer { require_key, ..Default::default() });
        let app = axum::Router::new()
            .route("/v1/audio/transcriptions", axum::routing::post(fake_transcriptions))
            .route(
                "/busy/v1/audio/transcriptions",
                axum::routing::post(|| async {
                    openai_error(
                        StatusCode::TOO_MANY_REQUESTS,
                        "Rate limit reached",
                        "requests",
                        Some("rate_limit_exceeded"),
                    )
                }),
            )
            .route(
                "/plain/v1/audio/transcriptions",
                axum::routing::post(|| async {
                    let body = serde_json::json!({"error": "failed to read audio data"});
                    (StatusCode::INTERNAL_SERVER_ERROR, body.to_string()).into_response()
                }),
            )
            .with_state(fake.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (fake, addr)
    }

    fn config(base_url: String, api_key: &str) -> OpenAiConfig {
        OpenAiConfig {
            base_url,
            api_key: api_key.into(),
            model: "whisper-1".into(),
            language: None,
            timeout: Duration::from_secs(5),
        }
    }

    fn speech() -> Pcm16k {
        Pcm16k::from_samples((0..8000).map(|i| ((i * 53) % 3000 - 1500) as i16).collect())
    }

    #[tokio::test]
    async fn transcribes_a_wav_upload_with_the_bearer_key() {
        let (fake, addr) = start(true).await;
        let mut c = config(format!("http://{addr}/"), KEY);
        c.language = Some("en".into());
        let asr: Arc<dyn Recognizer> = Arc::new(OpenAiAsr::new(c).unwrap());
        let t = asr.recognize(&speech()).await.unwrap();
        assert_eq!(t.text, "Hello from the fake transcription server.");
        asr.ready().await.unwrap();
        let seen = fake.seen.lock().unwrap();
        let (model, language, wav) = &seen[0];
        assert_eq!((model.as_str(), language.as_deref()), ("whisper-1", Some("en")));
        assert_eq!(crate::audio::decode(wav, Duration::from_secs(60)).unwrap(), speech());
    }

    #[tokio::test]
    async fn no_key_means_no_authorization_header_and_v1_suffix_is_accepted() {
        let (fake, addr) = start(false).await;
        let asr = OpenAiAsr::new(config(format!("http://{addr}/v1"), "")).unwrap();
        asr.recognize(&speech()).await.unwrap();
        assert_eq!(*fake.auth_headers.lock().unwrap(), [None]);
    }

    #[tokio::test]
    async fn provider_errors_are_classified() {
        let (_fake, addr) = start(true).await;
        let err = OpenAiAsr::new(config(format!("http://{addr}"), "sk-wrong")).unwrap().recognize(&speech()).await;
        let err = err.unwrap_err();
        assert!(matches!(&err, SpeechError::Provider { code, .. } if code == "HTTP 401 invalid_api_key"), "{err:?}");
        assert!(chatmesh_common::grpc::ServiceFailure::is_internal(&err));
        assert!(!format!("{err:?}").contains(KEY));

        let mut c = config(format!("http://{addr}"), KEY);
        c.model = "whisper-9".into();
        let err = OpenAiAsr::new(c).unwrap().recognize(&speech()).await.unwrap_err();
        assert!(err.to_string().contains("model_not_found") && err.to_string().contains("whisper-9"), "{err}");

        let asr = OpenAiAsr::new(config(format!("http://{addr}"), KEY)).unwrap();
        let err = asr.recognize(&Pcm16k::from_samples(vec![0; 800])).await.unwrap_err();
        assert!(matches!(&err, SpeechError::Unrecognizable(m) if m.contains("too short")), "{err:?}");

        let err = OpenAiAsr::new(config(format!("http://{addr}/busy"), KEY)).unwrap().recognize(&speech()).await;
        assert!(matches!(err, Err(SpeechError::Busy)), "{err:?}");

        let err = OpenAiAsr::new(config(format!("http://{addr}/plain"), "")).unwrap().recognize(&speech()).await;
        let err = err.unwrap_err();
        assert_eq!(err.to_string(), "openai error HTTP 500: failed to read audio data");
    }

    #[tokio::test]
    async fn silent_server_times_out_and_unreachable_one_fails_cleanly() {
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut c = config(format!("http://{}", silent.local_addr().unwrap()), KEY);
        c.timeout = Duration::from_millis(300);
        let started = Instant::now();
        let err = OpenAiAsr::new(c).unwrap().recognize(&speech()).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(3));
        assert!(matches!(err, SpeechError::Timeout(_)), "{err:?}");

        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let err = OpenAiAsr::new(config(format!("http://127.0.0.1:{port}"), KEY)).unwrap().recognize(&speech()).await;
        assert!(matches!(err, Err(SpeechError::Transport(_))), "{err:?}");
    }

    #[test]
    fn multipart_body_parses_back() {
        let body = multipart("b0undary", b"RIFFdata", &[("model", "whisper-1"), ("response_format", "json")]);
        let parts = parse_multipart("multipart/form-data; boundary=b0undary", &body).unwrap();
        let summary: HashMap<_, _> = parts.iter().map(|p| (p.name.as_str(), p.data.as_slice())).collect();
        assert_eq!(summary["file"], b"RIFFdata");
        assert_eq!(summary["model"], b"whisper-1");
        assert_eq!(summary["response_format"], b"json");
        assert_eq!(parts[0].filename.as_deref(), Some("speech.wav"));
    }
}
