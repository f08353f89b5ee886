//! Everything the speech service can refuse or fail at, with the text the client sees.

use std::time::Duration;

use chatmesh_common::grpc::ServiceFailure;

#[derive(Debug, thiserror::Error)]
pub enum SpeechError {
    #[error("request carries no user id")]
    NoCaller,

    // ---- the audio the client sent ----
    #[error("speech data is empty")]
    Empty,
    #[error("speech data has an odd number of bytes ({0}): raw speech must be 16-bit PCM samples")]
    OddLength(usize),
    #[error("speech is {seconds:.1} s long; at most {limit} s is accepted")]
    TooLong { seconds: f64, limit: u64 },
    #[error("malformed WAV file: {0}")]
    BadWav(String),
    #[error("unsupported audio: {0}; send 16 kHz 16-bit mono PCM (raw, little-endian) or a PCM WAV file")]
    UnsupportedFormat(String),
    /// The recognizer looked at the audio and found nothing it could transcribe (a cloud
    /// provider's "audio quality too poor" and the like).
    #[error("speech could not be recognized: {0}")]
    Unrecognizable(String),

    // ---- the recognizer ----
    #[error("speech recognition is busy; retry later")]
    Busy,
    #[error("speech recognition timed out after {0:?}")]
    Timeout(Duration),
    /// The recognizer cannot run (model missing, worker down): an operator problem.
    #[error("speech recognizer unavailable: {0}")]
    Unavailable(String),
    /// The recognizer's worker cannot start on this server (the cause is logged).
    #[error("speech recognition is not installed on this server (see README)")]
    NotInstalled(String),
    /// A cloud provider refused the request (credentials, quota, its own failure).
    #[error("{provider} error {code}: {message}")]
    Provider { provider: &'static str, code: String, message: String },
    #[error("speech provider unreachable: {0}")]
    Transport(String),
    #[error("speech configuration: {0}")]
    Config(String),
}

impl ServiceFailure for SpeechError {
    fn is_internal(&self) -> bool {
        matches!(
            self,
            Self::NoCaller | Self::Unavailable(_) | Self::Provider { .. } | Self::Transport(_) | Self::Config(_)
        )
    }
}
