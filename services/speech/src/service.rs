//! `SpeechService`: checks the caller and the audio, then asks the configured recognizer.

use std::time::{Duration, Instant};

use chatmesh_common::grpc::reply;
use chatmesh_proto::speech_service_server::SpeechService;
use chatmesh_proto::*;
use tonic::{Request, Response, Status};

use crate::SpeechRecognizer;
use crate::audio;
use crate::error::SpeechError;

pub struct Speech {
    pub recognizer: SpeechRecognizer,
    pub max_duration: Duration,
}

type Rpc<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl SpeechService for Speech {
    async fn speech_recognition(&self, req: Request<SpeechRecognitionReq>) -> Rpc<SpeechRecognitionRsp> {
        let req = req.into_inner();
        let result = async {
            let user = caller(&req)?;
            let audio = audio::decode(&req.speech_content, self.max_duration)?;
            let provider = self.recognizer.provider();
            let started = Instant::now();
            let outcome = self.recognizer.recognize(&audio).await;
            let elapsed = started.elapsed();
            let label = match &outcome {
                Ok(_) => "ok",
                Err(SpeechError::Unrecognizable(_)) => "unrecognizable",
                Err(SpeechError::Busy) => "busy",
                Err(SpeechError::Timeout(_)) => "timeout",
                Err(_) => "error",
            };
            metrics::counter!("chatmesh_speech_requests_total", "provider" => provider, "outcome" => label)
                .increment(1);
            metrics::histogram!("chatmesh_speech_recognition_seconds", "provider" => provider)
                .record(elapsed.as_secs_f64());
            let transcript = outcome?;
            // What was said stays out of the log: it is the user's message.
            tracing::info!(
                request_id = %req.request_id,
                user,
                provider,
                audio_ms = audio.duration().as_millis() as u64,
                elapsed_ms = elapsed.as_millis() as u64,
                chars = transcript.text.chars().count(),
                confidence = transcript.confidence,
                "speech recognized"
            );
            Ok::<_, SpeechError>(SpeechRecognitionRsp { recognition_result: transcript.text, ..Default::default() })
        };
        reply(req.request_id.clone(), result.await)
    }
}

/// The user the gateway resolved from the login session; the service serves no one else.
fn caller(req: &impl Envelope) -> Result<&str, SpeechError> {
    req.caller().ok_or(SpeechError::NoCaller)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    use crate::audio::Pcm16k;
    use crate::{ReadyFuture, RecognizeFuture, Recognizer, Transcript};

    /// Remembers what it was given and answers with a fixed text.
    #[derive(Default)]
    struct Recording(Mutex<Vec<Pcm16k>>);

    impl Recognizer for Recording {
        fn name(&self) -> &'static str {
            "recording"
        }
        fn recognize<'a>(&'a self, audio: &'a Pcm16k) -> RecognizeFuture<'a> {
            self.0.lock().unwrap().push(audio.clone());
            Box::pin(async { Ok(Transcript { text: "hello there".into(), confidence: Some(0.9) }) })
        }
        fn ready(&self) -> ReadyFuture<'_> {
            Box::pin(async { Ok(()) })
        }
    }

    fn speech(recognizer: Arc<Recording>) -> Speech {
        Speech { recognizer: SpeechRecognizer::new(recognizer), max_duration: Duration::from_secs(2) }
    }

    fn request(content: Vec<u8>, user: Option<&str>) -> Request<SpeechRecognitionReq> {
        Request::new(SpeechRecognitionReq {
            request_id: "r-1".into(),
            speech_content: content,
            user_id: user.map(str::to_string),
            session_id: Some("s".into()),
        })
    }

    async fn call(svc: &Speech, content: Vec<u8>, user: Option<&str>) -> SpeechRecognitionRsp {
        svc.speech_recognition(request(content, user)).await.unwrap().into_inner()
    }

    #[tokio::test]
    async fn raw_pcm_from_a_logged_in_user_is_recognized() {
        let recorder = Arc::new(Recording::default());
        let svc = speech(recorder.clone());
        let pcm: Vec<u8> = (0..16_000i16).flat_map(|s| (s % 300).to_le_bytes()).collect();
        let rsp = call(&svc, pcm.clone(), Some("alice")).await;
        assert!(rsp.success, "{}", rsp.errmsg);
        assert_eq!((rsp.request_id.as_str(), rsp.recognition_result.as_str()), ("r-1", "hello there"));
        assert_eq!(recorder.0.lock().unwrap()[0].to_le_bytes(), pcm);
    }

    #[tokio::test]
    async fn wav_at_another_rate_reaches_the_recognizer_as_16k_mono() {
        let recorder = Arc::new(Recording::default());
        let svc = speech(recorder.clone());
        let wav = crate::audio::tests::wav(1, 2, 44_100, 16, &vec![0u8; 44_100 * 4]);
        let rsp = call(&svc, wav, Some("alice")).await;
        assert!(rsp.success, "{}", rsp.errmsg);
        assert_eq!(recorder.0.lock().unwrap()[0].samples().len(), 16_000);
    }

    #[tokio::test]
    async fn bad_audio_gets_a_clear_error_and_never_reaches_the_recognizer() {
        let recorder = Arc::new(Recording::default());
        let svc = speech(recorder.clone());
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![], "speech data is empty"),
            (vec![0; 101], "odd number of bytes (101)"),
            (vec![0; 2 * 16_000 * 3], "speech is 3.0 s long; at most 2 s is accepted"),
            (b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00".to_vec(), "malformed WAV file"),
            (b"OggS\x00\x02\x00\x00\x00\x00".to_vec(), "unsupported audio: Ogg"),
        ];
        for (content, want) in cases {
            let rsp = call(&svc, content, Some("alice")).await;
            assert!(!rsp.success);
            assert!(rsp.errmsg.contains(want), "want {want:?}, got {:?}", rsp.errmsg);
            assert!(rsp.recognition_result.is_empty());
        }
        assert!(recorder.0.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn requests_without_a_caller_are_refused() {
        let recorder = Arc::new(Recording::default());
        let svc = speech(recorder.clone());
        for user in [None, Some("")] {
            let rsp = call(&svc, vec![0; 3200], user).await;
            assert!(!rsp.success);
            assert_eq!(rsp.errmsg, "internal error, please retry later");
        }
        assert!(recorder.0.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn recognizer_failures_are_reported_internal_ones_without_details() {
        struct Failing(fn() -> SpeechError);
        impl Recognizer for Failing {
            fn name(&self) -> &'static str {
                "failing"
            }
            fn recognize<'a>(&'a self, _: &'a Pcm16k) -> RecognizeFuture<'a> {
                let err = (self.0)();
                Box::pin(async move { Err(err) })
            }
            fn ready(&self) -> ReadyFuture<'_> {
                Box::pin(async { Err("never".into()) })
            }
        }
        let svc = |f: fn() -> SpeechError| Speech {
            recognizer: SpeechRecognizer::new(Arc::new(Failing(f))),
            max_duration: Duration::from_secs(60),
        };
        let rsp = call(&svc(|| SpeechError::Busy), vec![0; 3200], Some("a")).await;
        assert_eq!(rsp.errmsg, "speech recognition is busy; retry later");
        let secret = || SpeechError::Provider { provider: "baidu", code: "3302".into(), message: "token abc".into() };
        let rsp = call(&svc(secret), vec![0; 3200], Some("a")).await;
        assert_eq!(rsp.errmsg, "internal error, please retry later");
        let err = svc(|| SpeechError::Busy).recognizer.ready().await.unwrap_err();
        assert_eq!(err, "speech (failing): never");
    }
}
