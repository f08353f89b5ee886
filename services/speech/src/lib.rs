//! The speech service: speech to text for the seed's `SpeechService.SpeechRecognition`.
//!
//! The client's audio (raw 16 kHz 16-bit mono PCM as the seed's client sends it, or a WAV
//! file: see [`audio`]) is checked and normalised here, then handed to one [`Recognizer`]
//! chosen by `--speech-provider`:
//! - `offline` (default): OpenAI's Whisper base model run locally by CTranslate2, in a Python
//!   worker process this service starts and supervises ([`offline`]);
//! - `baidu`: Baidu's short-speech REST API, as the seed used it ([`baidu`]);
//! - `openai`: any OpenAI-compatible `/v1/audio/transcriptions` (OpenAI itself, a whisper.cpp or
//!   faster-whisper server) ([`openai`]).

pub mod audio;
pub mod baidu;
pub mod error;
pub mod offline;
pub mod openai;
pub mod service;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chatmesh_common::grpc::MAX_MESSAGE_BYTES;
use chatmesh_proto::speech_service_server::SpeechServiceServer;

pub use audio::Pcm16k;
pub use error::SpeechError;

/// What a recognizer heard. `confidence` (0..1) where the provider reports one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Transcript {
    pub text: String,
    pub confidence: Option<f32>,
}

pub type RecognizeFuture<'a> = Pin<Box<dyn Future<Output = Result<Transcript, SpeechError>> + Send + 'a>>;
pub type ReadyFuture<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// Turns 16 kHz mono speech into text. Used as `Arc<dyn Recognizer>`, so the methods return
/// boxed futures rather than being `async fn` (which would not be dyn-compatible).
pub trait Recognizer: Send + Sync {
    /// The provider's name, for logs and metrics.
    fn name(&self) -> &'static str;
    fn recognize<'a>(&'a self, audio: &'a Pcm16k) -> RecognizeFuture<'a>;
    /// Whether requests can be served now; the error says why not.
    fn ready(&self) -> ReadyFuture<'_>;
}

/// Who turns speech into text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SpeechProvider {
    /// Whisper base on this machine's CPU (a supervised Python worker with CTranslate2).
    Offline,
    /// Baidu short-speech recognition (vop.baidu.com/server_api).
    Baidu,
    /// An OpenAI-compatible /v1/audio/transcriptions endpoint.
    Openai,
}

#[derive(Debug, Clone, clap::Args)]
pub struct SpeechArgs {
    /// Speech-to-text provider.
    #[arg(long, env = "CHATMESH_SPEECH_PROVIDER", value_enum, default_value = "offline")]
    pub speech_provider: SpeechProvider,
    /// Longest speech accepted, in seconds (Baidu's own limit is 60).
    #[arg(long, env = "CHATMESH_SPEECH_MAX_SECONDS", default_value_t = 60)]
    pub speech_max_seconds: u64,
    /// Deadline of one recognition (the offline worker is restarted when it misses it).
    #[arg(long, env = "CHATMESH_SPEECH_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub speech_timeout: Duration,
    /// Spoken language as an ISO 639-1 code (`zh`, `en`, ...); empty: detected per request
    /// (offline, openai). Baidu chooses by `--baidu-dev-pid` instead.
    #[arg(long, env = "CHATMESH_SPEECH_LANGUAGE", default_value = "")]
    pub speech_language: String,
    #[command(flatten)]
    pub offline: offline::OfflineArgs,
    #[command(flatten)]
    pub baidu: baidu::BaiduArgs,
    #[command(flatten)]
    pub openai: openai::OpenAiArgs,
}

/// The configured recognizer, shared by the gRPC service and the readiness check.
#[derive(Clone)]
pub struct SpeechRecognizer(Arc<dyn Recognizer>);

impl std::fmt::Debug for SpeechRecognizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SpeechRecognizer").field(&self.0.name()).finish()
    }
}

impl SpeechRecognizer {
    /// The provider `args` name. Checks cloud settings up front (a bad deployment fails at
    /// startup); the offline worker starts in the background at once (must be called inside a
    /// Tokio runtime), and `ready()` tells when it has loaded the model.
    pub fn from_args(args: &SpeechArgs, data_dir: &Path) -> Result<Self, SpeechError> {
        let language = Some(args.speech_language.trim().to_string()).filter(|l| !l.is_empty());
        let recognizer: Arc<dyn Recognizer> = match args.speech_provider {
            SpeechProvider::Offline => {
                let model_dir = args.offline.speech_model_dir.clone().unwrap_or_else(|| default_model_dir(data_dir));
                Arc::new(offline::OfflineRecognizer::start(args.offline.config_with_python(
                    model_dir,
                    default_python(data_dir),
                    language,
                    args.speech_timeout,
                )))
            }
            SpeechProvider::Baidu => Arc::new(baidu::BaiduAsr::new(args.baidu.config(args.speech_timeout))?),
            SpeechProvider::Openai => {
                Arc::new(openai::OpenAiAsr::new(args.openai.config(language, args.speech_timeout))?)
            }
        };
        Ok(Self(recognizer))
    }

    pub fn new(recognizer: Arc<dyn Recognizer>) -> Self {
        Self(recognizer)
    }

    pub fn provider(&self) -> &'static str {
        self.0.name()
    }

    /// For `/readyz`: `Err` says why speech requests would fail now.
    pub async fn ready(&self) -> Result<(), String> {
        self.0.ready().await.map_err(|why| format!("speech ({}): {why}", self.0.name()))
    }

    pub async fn recognize(&self, audio: &Pcm16k) -> Result<Transcript, SpeechError> {
        self.0.recognize(audio).await
    }
}

/// `<data-dir>/models/whisper-base` if it exists, else the cache `e2e/infra/speech.sh` fills
/// (`~/.cache/chatmesh/models/whisper-base`) if that exists, else the first (which `ready()`
/// then reports missing).
pub fn default_model_dir(data_dir: &Path) -> PathBuf {
    let in_data = data_dir.join("models").join("whisper-base");
    if in_data.exists() {
        return in_data;
    }
    let cached = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/chatmesh/models/whisper-base"));
    cached.filter(|c| c.exists()).unwrap_or(in_data)
}

/// The worker's interpreter, found like the model: `<data-dir>/speech/venv` if it exists, else
/// the venv `e2e/infra/speech.sh` makes (`~/.cache/chatmesh/speech/venv`), else `python3`.
pub fn default_python(data_dir: &Path) -> PathBuf {
    let venvs = [
        Some(data_dir.join("speech/venv")),
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/chatmesh/speech/venv")),
    ];
    venvs
        .into_iter()
        .flatten()
        .map(|v| v.join("bin/python"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("python3"))
}

/// The gRPC service, ready to add to a tonic router.
pub fn service(args: &SpeechArgs, recognizer: SpeechRecognizer) -> SpeechServiceServer<service::Speech> {
    let speech = service::Speech { recognizer, max_duration: Duration::from_secs(args.speech_max_seconds) };
    SpeechServiceServer::new(speech)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// reqwest's Display includes the URL (Baidu's token URL carries the secret): drop it, keep
/// the cause chain.
pub(crate) fn transport_error(err: reqwest::Error, timeout: Duration) -> SpeechError {
    if err.is_timeout() {
        return SpeechError::Timeout(timeout);
    }
    SpeechError::Transport(chatmesh_common::error_chain(&err.without_url()))
}

/// An http(s) URL without a trailing slash, or a configuration error naming `what`.
pub(crate) fn endpoint(what: &str, url: &str) -> Result<String, SpeechError> {
    let parsed = reqwest::Url::parse(url).map_err(|e| SpeechError::Config(format!("{what} {url:?}: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(SpeechError::Config(format!("{what} {url:?} is not http(s)")));
    }
    Ok(url.trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        speech: SpeechArgs,
    }

    #[test]
    fn defaults_are_offline_sixty_seconds_and_secrets_never_print() {
        let cli = Cli::parse_from(["x"]);
        assert_eq!(cli.speech.speech_provider, SpeechProvider::Offline);
        assert_eq!(cli.speech.speech_max_seconds, 60);
        let cli = Cli::parse_from([
            "x",
            "--speech-provider",
            "baidu",
            "--baidu-api-key",
            "key-1",
            "--baidu-secret-key",
            "very-secret-1",
            "--openai-api-key",
            "sk-very-secret-2",
        ]);
        let shown = format!("{:?}", cli.speech);
        assert!(shown.contains("key-1") && shown.contains("<redacted>"), "{shown}");
        assert!(!shown.contains("very-secret"), "{shown}");
    }

    #[test]
    fn the_worker_venv_is_found_like_the_model() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let python = data.join("speech/venv/bin/python");
        std::fs::create_dir_all(python.parent().unwrap()).unwrap();
        assert_ne!(default_python(&data), python, "no interpreter there yet");
        std::fs::write(&python, "").unwrap();
        assert_eq!(default_python(&data), python);
        let cli = Cli::parse_from(["x", "--speech-python", "/opt/py/bin/python"]);
        let config = cli.speech.offline.config_with_python(PathBuf::new(), python, None, Duration::from_secs(1));
        assert_eq!(config.python, PathBuf::from("/opt/py/bin/python"), "the flag wins");
    }

    #[tokio::test]
    async fn cloud_providers_refuse_incomplete_settings_at_startup() {
        let cli = Cli::parse_from(["x", "--speech-provider", "baidu", "--baidu-api-key", "k"]);
        let err = SpeechRecognizer::from_args(&cli.speech, Path::new("data")).unwrap_err();
        assert!(err.to_string().contains("secret"), "{err}");
        let cli = Cli::parse_from(["x", "--speech-provider", "openai", "--openai-base-url", "ftp://x"]);
        let err = SpeechRecognizer::from_args(&cli.speech, Path::new("data")).unwrap_err();
        assert!(err.to_string().contains("not http"), "{err}");
        let cli = Cli::parse_from(["x", "--speech-provider", "openai", "--openai-base-url", "http://127.0.0.1:1/"]);
        let ok = SpeechRecognizer::from_args(&cli.speech, Path::new("data")).unwrap();
        assert_eq!(ok.provider(), "openai");
        ok.ready().await.unwrap();
    }
}
