//! Speech to text through the gateway (feature 25 of the seed): a logged-in user's voice
//! message, synthesised here with espeak-ng, comes back as the right words from the offline
//! recognizer; unauthenticated and bad requests are refused. Both backends.

mod support;

use std::process::Command;

use chatmesh_e2e::rid;
use chatmesh_proto::{SpeechRecognitionReq, SpeechRecognitionRsp};
use support::{Backend, Stack};

/// A WAV file of `text` spoken by espeak-ng (22 kHz; the service resamples to 16 kHz).
fn speak(text: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("speech.wav");
    let status = Command::new("espeak-ng")
        .arg("-w")
        .arg(&wav)
        .arg(text)
        .status()
        .expect("espeak-ng (e2e/infra/speech.sh installs it)");
    assert!(status.success());
    std::fs::read(wav).unwrap()
}

/// The offline model and worker of e2e/infra/speech.sh, as flags for a stack started here;
/// `None` (skip) when unset and not required.
fn model_flags() -> Option<Vec<String>> {
    let model = support::real_url("CHATMESH_TEST_SPEECH_MODEL_DIR")?;
    let python = support::real_url("CHATMESH_TEST_SPEECH_PYTHON")?;
    Some(vec![format!("--speech-model-dir={model}"), format!("--speech-python={python}")])
}

async fn start(backend: Backend) -> Option<Stack> {
    // An external system (e.g. the kind cluster) runs its own speech service with the model
    // in its image: nothing to pass.
    if backend == Backend::Real && support::external::gateway().is_some() {
        return Stack::start(backend).await;
    }
    let flags = model_flags()?;
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    Stack::start_with(backend, &flags).await
}

async fn recognize(s: &Stack, session: Option<String>, audio: Vec<u8>) -> SpeechRecognitionRsp {
    let req = SpeechRecognitionReq { request_id: rid(), speech_content: audio, user_id: None, session_id: session };
    s.client.call("/service/speech/recognition", &req).await.unwrap()
}

async fn a_voice_message_becomes_its_words(s: Stack) {
    let (_, session) = s.user("voice").await;
    let rsp = recognize(&s, Some(session.clone()), speak("please call me tomorrow morning")).await;
    assert!(rsp.success, "{}", rsp.errmsg);
    let heard = rsp.recognition_result.to_lowercase();
    let words = ["please", "call", "me", "tomorrow", "morning"];
    let found = words.iter().filter(|w| heard.contains(*w)).count();
    assert!(found >= 4, "heard {heard:?}");

    // Refused: no login, a bad session, no audio, audio that is not 16-bit PCM.
    let rsp = recognize(&s, None, speak("hello")).await;
    assert!(!rsp.success && rsp.errmsg.contains("invalid or expired"), "{}", rsp.errmsg);
    let rsp = recognize(&s, Some("not-a-session".into()), speak("hello")).await;
    assert!(!rsp.success && rsp.errmsg.contains("invalid or expired"), "{}", rsp.errmsg);
    let rsp = recognize(&s, Some(session.clone()), Vec::new()).await;
    assert!(!rsp.success && rsp.errmsg.contains("empty"), "{}", rsp.errmsg);
    let rsp = recognize(&s, Some(session.clone()), vec![1, 2, 3]).await;
    assert!(!rsp.success && !rsp.errmsg.is_empty());
    s.stop().await;
}

mod standalone {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_voice_message_becomes_its_words() {
        if support::external::gateway().is_some() {
            return support::external::skip("the standalone variant runs in this process, not on the external gateway");
        }
        if let Some(s) = start(Backend::Standalone).await {
            super::a_voice_message_becomes_its_words(s).await;
        }
    }
}

/// Real servers, or the external gateway's own speech service (e2e/kind/run.sh's cluster).
mod real {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_voice_message_becomes_its_words() {
        if let Some(s) = start(Backend::Real).await {
            super::a_voice_message_becomes_its_words(s).await;
        }
    }
}
