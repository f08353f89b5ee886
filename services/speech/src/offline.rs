//! Offline recognition: OpenAI's Whisper base model (CTranslate2 format, int8 on the CPU) in a
//! Python worker process that this service starts, feeds over stdin/stdout and restarts when it
//! dies or hangs.
//!
//! Why a worker and not CTranslate2 linked in (the `ct2rs` crate), measured on this project's
//! 2-core machines with the same model and the same espeak-ng sentences:
//! - Speed is the same: both run CTranslate2's int8 kernels, ~1.5 s per 3-second sentence
//!   (ct2rs 1.45-1.58 s, the worker 1.38-1.61 s, side by side on a lightly loaded machine).
//! - Building is not: `ct2rs` 0.10.3 compiles CTranslate2, ruy, sentencepiece and oniguruma
//!   from C++ source with cmake. A cold build took 13 min of CPU (697 s user + 81 s system),
//!   19 min of wall time on two shared cores (about 7-10 min on idle ones), and ~1 GB of
//!   target dir; CI would pay it for the test build and again for the release image, against
//!   a 45-minute budget where everything else already takes ~15. It also needs an `opt-level`
//!   override in dev builds (or CTranslate2 is built unoptimised), a hand-written
//!   `preprocessor_config.json` beside the model, and has no voice-activity detection: silence
//!   came out as "you" and white noise as "I'm".
//! - The worker uses PyPI's prebuilt `ctranslate2` and `faster-whisper` wheels: nothing to
//!   compile, a ~1 minute install cached with the model (`e2e/infra/speech.sh`), Silero VAD
//!   (silence and noise give "" in ~30 ms) and Whisper's no-speech / temperature-fallback
//!   handling. The price is a Python 3 venv (~470 MB) in the image and ~340 MB of memory.
//! - Isolation: a crash or a runaway decode in native code kills the worker, not the service;
//!   the supervisor reports not-ready, fails waiting requests quickly and starts a new worker.
//!
//! Requests are served one at a time (recognition already uses every core it is given); up to
//! `--speech-queue` more wait, the rest are refused as busy. A request that waited longer than
//! the recognition timeout is not started.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::{mpsc, oneshot, watch};

use crate::audio::Pcm16k;
use crate::error::SpeechError;
use crate::{ReadyFuture, RecognizeFuture, Recognizer, Transcript};

/// The worker program, embedded so binary and worker always match.
pub const WORKER_PY: &str = include_str!("worker.py");

/// What a Whisper model directory in CTranslate2 format holds.
pub const MODEL_FILES: [&str; 4] = ["model.bin", "config.json", "tokenizer.json", "vocabulary.txt"];

#[derive(Debug, Clone, clap::Args)]
pub struct OfflineArgs {
    /// Whisper model in CTranslate2 format (model.bin, config.json, tokenizer.json,
    /// vocabulary.txt) [default: `<data-dir>/models/whisper-base` if present, else
    /// `~/.cache/chatmesh/models/whisper-base`].
    #[arg(long, env = "CHATMESH_SPEECH_MODEL_DIR")]
    pub speech_model_dir: Option<PathBuf>,
    /// Python interpreter with `faster-whisper` installed [default: the venv
    /// e2e/infra/speech.sh makes, `<data-dir>/speech/venv` or `~/.cache/chatmesh/speech/venv`,
    /// if present, else `python3`].
    #[arg(long, env = "CHATMESH_SPEECH_PYTHON")]
    pub speech_python: Option<PathBuf>,
    /// CPU threads for recognition; 0: every core this process may run on.
    #[arg(long, env = "CHATMESH_SPEECH_THREADS", default_value_t = 0)]
    pub speech_threads: usize,
    /// Requests waiting for the recognizer; more are refused as busy.
    #[arg(long, env = "CHATMESH_SPEECH_QUEUE", default_value_t = 16)]
    pub speech_queue: usize,
    /// Longest wait for the worker to load the model.
    #[arg(long, env = "CHATMESH_SPEECH_STARTUP_TIMEOUT", default_value = "120s", value_parser = humantime::parse_duration)]
    pub speech_startup_timeout: Duration,
    /// Beam search width (1: greedy, faster, a little less accurate).
    #[arg(long, env = "CHATMESH_SPEECH_BEAM_SIZE", default_value_t = 5)]
    pub speech_beam_size: usize,
}

impl OfflineArgs {
    pub fn config(&self, model_dir: PathBuf, language: Option<String>, timeout: Duration) -> OfflineConfig {
        self.config_with_python(model_dir, PathBuf::from("python3"), language, timeout)
    }

    /// As [`OfflineArgs::config`], with `default_python` unless `--speech-python` was given.
    pub fn config_with_python(
        &self,
        model_dir: PathBuf,
        default_python: PathBuf,
        language: Option<String>,
        timeout: Duration,
    ) -> OfflineConfig {
        OfflineConfig {
            model_dir,
            python: self.speech_python.clone().unwrap_or(default_python),
            threads: self.speech_threads,
            queue: self.speech_queue.max(1),
            language,
            timeout,
            startup_timeout: self.speech_startup_timeout,
            beam_size: self.speech_beam_size.max(1),
        }
    }
}

#[derive(Debug, Clone)]
pub struct OfflineConfig {
    pub model_dir: PathBuf,
    pub python: PathBuf,
    pub threads: usize,
    pub queue: usize,
    pub language: Option<String>,
    /// Deadline of one recognition, and the longest a request may wait in the queue.
    pub timeout: Duration,
    pub startup_timeout: Duration,
    pub beam_size: usize,
}

impl OfflineConfig {
    /// Which model files are missing, as an error for `ready()` and for requests.
    pub fn check_model(&self) -> Result<(), String> {
        let missing: Vec<&str> = MODEL_FILES.iter().copied().filter(|f| !self.model_dir.join(f).is_file()).collect();
        if missing.is_empty() {
            return Ok(());
        }
        Err(format!(
            "Whisper model files missing in {}: {} (set --speech-model-dir; e2e/infra/speech.sh downloads the model)",
            self.model_dir.display(),
            missing.join(", ")
        ))
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Health {
    Starting,
    Up {
        pid: u32,
    },
    Down(String),
    /// The worker could not be started at all (no model, no venv, a broken install).
    NotInstalled(String),
}

struct Job {
    audio: Vec<u8>,
    queued: Instant,
    reply: oneshot::Sender<Result<Transcript, SpeechError>>,
}

/// The offline provider: a handle on the supervisor task that owns the worker process.
pub struct OfflineRecognizer {
    jobs: mpsc::Sender<Job>,
    health: watch::Receiver<Health>,
    supervisor: tokio::task::JoinHandle<()>,
}

impl Drop for OfflineRecognizer {
    fn drop(&mut self) {
        // The worker is `kill_on_drop`: aborting the supervisor ends it.
        self.supervisor.abort();
    }
}

impl OfflineRecognizer {
    /// Starts the supervisor, which starts the worker at once (so the model is loaded before
    /// the first request). Must be called inside a Tokio runtime.
    pub fn start(config: OfflineConfig) -> Self {
        let (jobs, queue) = mpsc::channel(config.queue);
        let (health_tx, health) = watch::channel(Health::Starting);
        let supervisor = tokio::spawn(supervise(config, queue, health_tx));
        Self { jobs, health, supervisor }
    }

    /// The worker's process id while it is up (tests use it to kill the worker).
    pub fn worker_pid(&self) -> Option<u32> {
        match *self.health.borrow() {
            Health::Up { pid } => Some(pid),
            _ => None,
        }
    }

    /// Waits until the worker is up or has failed to start, at most `limit`.
    pub async fn wait_started(&self, limit: Duration) -> Result<(), String> {
        let mut health = self.health.clone();
        let settled = tokio::time::timeout(limit, health.wait_for(|h| *h != Health::Starting)).await;
        match settled {
            Err(_) => Err(format!("worker still loading the model after {limit:?}")),
            Ok(Err(_)) => Err("speech supervisor stopped".into()),
            Ok(Ok(h)) => match &*h {
                Health::Up { .. } => Ok(()),
                Health::Down(why) | Health::NotInstalled(why) => Err(why.clone()),
                Health::Starting => unreachable!("waited for another state"),
            },
        }
    }

    pub async fn recognize(&self, audio: &Pcm16k) -> Result<Transcript, SpeechError> {
        match &*self.health.borrow() {
            Health::Down(why) => return Err(SpeechError::Unavailable(why.clone())),
            Health::NotInstalled(why) => return Err(SpeechError::NotInstalled(why.clone())),
            _ => {}
        }
        let (reply, answer) = oneshot::channel();
        let job = Job { audio: audio.to_le_bytes(), queued: Instant::now(), reply };
        self.jobs.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SpeechError::Busy,
            mpsc::error::TrySendError::Closed(_) => SpeechError::Unavailable("speech supervisor stopped".into()),
        })?;
        answer.await.map_err(|_| SpeechError::Unavailable("speech supervisor stopped".into()))?
    }
}

impl Recognizer for OfflineRecognizer {
    fn name(&self) -> &'static str {
        "offline"
    }

    fn recognize<'a>(&'a self, audio: &'a Pcm16k) -> RecognizeFuture<'a> {
        Box::pin(OfflineRecognizer::recognize(self, audio))
    }

    fn ready(&self) -> ReadyFuture<'_> {
        let health = self.health.borrow().clone();
        Box::pin(async move {
            match health {
                Health::Up { .. } => Ok(()),
                Health::Starting => Err("worker is loading the Whisper model".into()),
                Health::Down(why) | Health::NotInstalled(why) => Err(why),
            }
        })
    }
}

/// Why `serve` returned.
enum Stop {
    /// The recognizer was dropped.
    Closed,
    /// The worker died or was killed; a new one should start.
    Died(String),
}

async fn supervise(config: OfflineConfig, mut jobs: mpsc::Receiver<Job>, health: watch::Sender<Health>) {
    let mut backoff = Duration::from_millis(500);
    loop {
        health.send_replace(Health::Starting);
        match Worker::spawn(&config).await {
            Ok(mut worker) => {
                tracing::info!(pid = worker.pid, model = %config.model_dir.display(), "speech worker ready");
                health.send_replace(Health::Up { pid: worker.pid });
                backoff = Duration::from_millis(500);
                match worker.serve(&mut jobs, &config).await {
                    Stop::Closed => return,
                    Stop::Died(why) => {
                        tracing::warn!(pid = worker.pid, %why, "speech worker stopped; starting another");
                        metrics::counter!("chatmesh_speech_worker_restarts_total", "reason" => "died").increment(1);
                        health.send_replace(Health::Down(why));
                    }
                }
            }
            Err(why) => {
                tracing::error!(%why, retry_in = ?backoff, "speech worker cannot start");
                metrics::counter!("chatmesh_speech_worker_restarts_total", "reason" => "start_failed").increment(1);
                health.send_replace(Health::NotInstalled(why.clone()));
                // Until the next attempt, fail queued requests at once instead of holding them.
                let retry = tokio::time::sleep(backoff);
                tokio::pin!(retry);
                loop {
                    tokio::select! {
                        _ = &mut retry => break,
                        job = jobs.recv() => match job {
                            None => return,
                            Some(job) => {
                                let _ = job.reply.send(Err(SpeechError::NotInstalled(why.clone())));
                            }
                        },
                    }
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// One line the worker writes on stdout.
#[derive(Debug, Default, Deserialize)]
struct WorkerLine {
    #[serde(default)]
    ready: bool,
    pid: Option<u32>,
    fatal: Option<String>,
    id: Option<u64>,
    text: Option<String>,
    confidence: Option<f32>,
    language: Option<String>,
    seconds: Option<f64>,
    error: Option<String>,
}

/// Why one request failed inside `Worker::transcribe`.
enum Failure {
    /// The worker answered with an error for this request; it is still usable.
    Request(String),
    /// The pipe broke or the worker talked nonsense: it must go.
    Broken(String),
}

struct Worker {
    child: Child,
    pid: u32,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// The last lines of the worker's stderr, for error messages.
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    next_id: u64,
}

impl Worker {
    async fn spawn(config: &OfflineConfig) -> Result<Worker, String> {
        config.check_model()?;
        let mut cmd = Command::new(&config.python);
        cmd.arg("-u")
            .arg("-c")
            .arg(WORKER_PY)
            .arg("--model-dir")
            .arg(&config.model_dir)
            .arg("--threads")
            .arg(config.threads.to_string())
            .arg("--language")
            .arg(config.language.as_deref().unwrap_or(""))
            .arg("--beam-size")
            .arg(config.beam_size.to_string())
            // Never reach for the Hugging Face hub: the model is on disk.
            .env("HF_HUB_OFFLINE", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child =
            cmd.spawn().map_err(|e| format!("cannot start the speech worker with {}: {e}", config.python.display()))?;
        let stdin = child.stdin.take().expect("piped stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let stderr = child.stderr.take().expect("piped stderr");
        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
        let mut stderr_done = tokio::spawn(forward_stderr(stderr, stderr_tail.clone()));

        let mut line = String::new();
        let read = tokio::time::timeout(config.startup_timeout, stdout.read_line(&mut line)).await;
        let tail = |tail: &Arc<Mutex<VecDeque<String>>>| {
            let lines = tail.lock().expect("stderr tail lock");
            lines.iter().cloned().collect::<Vec<_>>().join(" | ")
        };
        match read {
            Err(_) => return Err(format!("speech worker did not load the model within {:?}", config.startup_timeout)),
            Ok(Err(e)) => return Err(format!("reading from the speech worker: {e}")),
            Ok(Ok(0)) => {
                let status = child.wait().await.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                // Let the stderr forwarder collect the traceback.
                let _ = tokio::time::timeout(Duration::from_secs(2), &mut stderr_done).await;
                return Err(format!("speech worker exited while starting ({status}): {}", tail(&stderr_tail)));
            }
            Ok(Ok(_)) => {}
        }
        let hello: WorkerLine = serde_json::from_str(&line)
            .map_err(|e| format!("speech worker said {:?} instead of ready: {e}", line.trim()))?;
        if let Some(fatal) = hello.fatal {
            return Err(format!("speech worker: {fatal}"));
        }
        let pid = match (hello.ready, hello.pid) {
            (true, Some(pid)) => pid,
            _ => return Err(format!("speech worker said {:?} instead of ready", line.trim())),
        };
        Ok(Worker { child, pid, stdin, stdout, stderr_tail, next_id: 0 })
    }

    async fn serve(&mut self, jobs: &mut mpsc::Receiver<Job>, config: &OfflineConfig) -> Stop {
        enum Event {
            Job(Option<Job>),
            Exited(String),
        }
        loop {
            let event = tokio::select! {
                job = jobs.recv() => Event::Job(job),
                status = self.child.wait() => {
                    Event::Exited(status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()))
                }
            };
            let job = match event {
                Event::Job(Some(job)) => job,
                Event::Job(None) => {
                    let _ = self.child.kill().await;
                    return Stop::Closed;
                }
                Event::Exited(status) => return Stop::Died(self.died(&status)),
            };
            if job.reply.is_closed() {
                continue; // the caller gave up
            }
            if job.queued.elapsed() > config.timeout {
                let _ = job.reply.send(Err(SpeechError::Timeout(config.timeout)));
                continue;
            }
            let started = Instant::now();
            match tokio::time::timeout(config.timeout, self.transcribe(&job.audio)).await {
                Ok(Ok(transcript)) => {
                    let _ = job.reply.send(Ok(transcript));
                }
                Ok(Err(Failure::Request(why))) => {
                    tracing::warn!(%why, "speech worker could not transcribe a request");
                    let _ = job.reply.send(Err(SpeechError::Provider {
                        provider: "offline",
                        code: "worker".into(),
                        message: why,
                    }));
                }
                Ok(Err(Failure::Broken(why))) => {
                    let _ = self.child.kill().await;
                    let why = self.died(&why);
                    let _ = job.reply.send(Err(SpeechError::Unavailable(why.clone())));
                    return Stop::Died(why);
                }
                Err(_) => {
                    // A hung decode: the only way to stop it is to end the process.
                    let _ = self.child.kill().await;
                    tracing::warn!(elapsed = ?started.elapsed(), "speech worker missed the deadline; killed");
                    let _ = job.reply.send(Err(SpeechError::Timeout(config.timeout)));
                    return Stop::Died(format!("worker killed after missing the {:?} deadline", config.timeout));
                }
            }
        }
    }

    fn died(&self, why: &str) -> String {
        let tail = self.stderr_tail.lock().expect("stderr tail lock");
        let tail: Vec<String> = tail.iter().rev().take(3).rev().cloned().collect();
        if tail.is_empty() {
            format!("speech worker died: {why}")
        } else {
            format!("speech worker died: {why}: {}", tail.join(" | "))
        }
    }

    async fn transcribe(&mut self, audio: &[u8]) -> Result<Transcript, Failure> {
        self.next_id += 1;
        let id = self.next_id;
        let header = format!("{}\n", serde_json::json!({ "id": id, "bytes": audio.len() }));
        let broken = |e: std::io::Error| Failure::Broken(format!("pipe to the worker: {e}"));
        self.stdin.write_all(header.as_bytes()).await.map_err(broken)?;
        self.stdin.write_all(audio).await.map_err(broken)?;
        self.stdin.flush().await.map_err(broken)?;
        let mut line = String::new();
        let n = self.stdout.read_line(&mut line).await.map_err(broken)?;
        if n == 0 {
            return Err(Failure::Broken("worker closed its output".into()));
        }
        let reply: WorkerLine = serde_json::from_str(&line)
            .map_err(|e| Failure::Broken(format!("unreadable worker reply {:?}: {e}", line.trim())))?;
        if reply.id != Some(id) {
            return Err(Failure::Broken(format!("worker answered request {:?}, expected {id}", reply.id)));
        }
        if let Some(error) = reply.error {
            return Err(Failure::Request(error));
        }
        tracing::debug!(
            seconds = reply.seconds,
            language = reply.language.as_deref().unwrap_or(""),
            confidence = reply.confidence,
            "speech worker transcribed"
        );
        Ok(Transcript { text: reply.text.unwrap_or_default(), confidence: reply.confidence })
    }
}

/// The worker's stderr into our log (it says what it loaded, and Python tracebacks), keeping
/// the last lines for error messages.
async fn forward_stderr(stderr: tokio::process::ChildStderr, tail: Arc<Mutex<VecDeque<String>>>) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::info!(target: "chatmesh_speech::worker", "{line}");
        let mut tail = tail.lock().expect("stderr tail lock");
        if tail.len() == 20 {
            tail.pop_front();
        }
        tail.push_back(line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    use crate::service::Speech;
    use chatmesh_proto::speech_service_server::SpeechService;

    /// A model directory that passes the file check (its contents are never read by fakes).
    fn fake_model_dir(dir: &Path) -> PathBuf {
        let model = dir.join("model");
        std::fs::create_dir_all(&model).unwrap();
        for f in MODEL_FILES {
            std::fs::write(model.join(f), b"not a model").unwrap();
        }
        model
    }

    /// A stand-in for Python that speaks the worker protocol: `on_request` is the shell run for
    /// each request (after reading its audio), `$id` holding the request id.
    fn fake_python(dir: &Path, name: &str, startup: &str, on_request: &str) -> PathBuf {
        let path = dir.join(name);
        let script = format!(
            r#"#!/usr/bin/env bash
{startup}
echo "{{\"ready\": true, \"pid\": $$}}"
while IFS= read -r line; do
  n=$(sed 's/.*"bytes":\([0-9]*\).*/\1/' <<<"$line")
  id=$(sed 's/.*"id":\([0-9]*\).*/\1/' <<<"$line")
  head -c "$n" >/dev/null
  {on_request}
done
"#
        );
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    const ANSWER: &str = r#"echo "{\"id\": $id, \"text\": \"fake words\", \"confidence\": 0.5, \"language\": \"en\"}""#;

    fn config(model_dir: PathBuf, python: PathBuf) -> OfflineConfig {
        OfflineConfig {
            model_dir,
            python,
            threads: 0,
            queue: 4,
            language: None,
            timeout: Duration::from_secs(60),
            startup_timeout: Duration::from_secs(180),
            beam_size: 5,
        }
    }

    fn second() -> Pcm16k {
        Pcm16k::from_samples(vec![0; 16_000])
    }

    /// Waits until a worker other than `old` is up.
    async fn replaced(rec: &OfflineRecognizer, old: u32) -> u32 {
        let mut health = rec.health.clone();
        let up = health.wait_for(|h| matches!(h, Health::Up { pid } if *pid != old));
        let h = tokio::time::timeout(Duration::from_secs(20), up).await.expect("a new worker").unwrap().clone();
        let Health::Up { pid } = h else { unreachable!() };
        pid
    }

    #[tokio::test]
    async fn worker_answers_and_reports_ready() {
        let dir = tempfile::tempdir().unwrap();
        let python = fake_python(dir.path(), "ok", "", ANSWER);
        let rec = OfflineRecognizer::start(config(fake_model_dir(dir.path()), python));
        rec.wait_started(Duration::from_secs(20)).await.unwrap();
        Recognizer::ready(&rec).await.unwrap();
        for _ in 0..3 {
            let t = rec.recognize(&second()).await.unwrap();
            assert_eq!(t, Transcript { text: "fake words".into(), confidence: Some(0.5) });
        }
        assert!(rec.worker_pid().is_some());
    }

    #[tokio::test]
    async fn a_crashed_worker_fails_its_request_and_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let python =
            fake_python(dir.path(), "crash", "", "echo 'Fatal Python error: Segmentation fault' >&2; exit 139");
        let rec = OfflineRecognizer::start(config(fake_model_dir(dir.path()), python));
        rec.wait_started(Duration::from_secs(20)).await.unwrap();
        let first = rec.worker_pid().unwrap();
        let err = rec.recognize(&second()).await.unwrap_err();
        assert!(matches!(&err, SpeechError::Unavailable(m) if m.contains("speech worker died")), "{err:?}");
        let next = replaced(&rec, first).await;
        assert_ne!(next, first);
        Recognizer::ready(&rec).await.unwrap();
    }

    #[tokio::test]
    async fn a_killed_worker_is_noticed_while_idle_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let python = fake_python(dir.path(), "ok", "", ANSWER);
        let rec = OfflineRecognizer::start(config(fake_model_dir(dir.path()), python));
        rec.wait_started(Duration::from_secs(20)).await.unwrap();
        let first = rec.worker_pid().unwrap();
        std::process::Command::new("kill").arg("-9").arg(first.to_string()).status().unwrap();
        replaced(&rec, first).await;
        assert_eq!(rec.recognize(&second()).await.unwrap().text, "fake words");
    }

    #[tokio::test]
    async fn a_hung_worker_is_killed_at_the_deadline_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let python = fake_python(dir.path(), "hang", "", "sleep 600");
        let mut c = config(fake_model_dir(dir.path()), python);
        c.timeout = Duration::from_millis(300);
        let rec = OfflineRecognizer::start(c);
        rec.wait_started(Duration::from_secs(20)).await.unwrap();
        let first = rec.worker_pid().unwrap();
        let started = Instant::now();
        let err = rec.recognize(&second()).await.unwrap_err();
        assert!(matches!(err, SpeechError::Timeout(_)), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        replaced(&rec, first).await;
    }

    #[tokio::test]
    async fn requests_beyond_the_queue_are_refused_as_busy() {
        let dir = tempfile::tempdir().unwrap();
        let python = fake_python(dir.path(), "slow", "", &format!("sleep 1; {ANSWER}"));
        let mut c = config(fake_model_dir(dir.path()), python);
        c.queue = 1;
        let rec = Arc::new(OfflineRecognizer::start(c));
        rec.wait_started(Duration::from_secs(20)).await.unwrap();
        let busy = rec.clone();
        let first = tokio::spawn(async move { busy.recognize(&second()).await });
        tokio::time::sleep(Duration::from_millis(300)).await; // the worker has the first
        let queued = rec.clone();
        let waiting = tokio::spawn(async move { queued.recognize(&second()).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let err = rec.recognize(&second()).await.unwrap_err();
        assert!(matches!(err, SpeechError::Busy), "{err:?}");
        assert_eq!(first.await.unwrap().unwrap().text, "fake words");
        assert_eq!(waiting.await.unwrap().unwrap().text, "fake words");
    }

    #[tokio::test]
    async fn startup_failures_are_reported_with_their_cause() {
        let dir = tempfile::tempdir().unwrap();
        let model = fake_model_dir(dir.path());
        let cases = [
            (
                fake_python(
                    dir.path(),
                    "fatal",
                    r#"echo '{"fatal": "cannot load the model from /m: RuntimeError: bad model"}'; exit 1"#,
                    "",
                ),
                "RuntimeError: bad model",
            ),
            (
                fake_python(
                    dir.path(),
                    "nomodule",
                    "echo \"ModuleNotFoundError: No module named 'faster_whisper'\" >&2; exit 1",
                    "",
                ),
                "No module named 'faster_whisper'",
            ),
            (dir.path().join("no-such-python"), "cannot start the speech worker"),
        ];
        for (python, want) in cases {
            let rec = OfflineRecognizer::start(config(model.clone(), python));
            let err = rec.wait_started(Duration::from_secs(20)).await.unwrap_err();
            assert!(err.contains(want), "want {want:?}: {err}");
            assert!(Recognizer::ready(&rec).await.unwrap_err().contains(want));
            let failed = rec.recognize(&second()).await.unwrap_err();
            assert!(matches!(&failed, SpeechError::NotInstalled(m) if m.contains(want)), "{failed:?}");
            assert_eq!(failed.to_string(), "speech recognition is not installed on this server (see README)");
        }
        // No model: reported with the directory and what is missing; Python is not even started.
        let rec = OfflineRecognizer::start(config(dir.path().join("empty"), dir.path().join("no-such-python")));
        let err = rec.wait_started(Duration::from_secs(20)).await.unwrap_err();
        assert!(err.contains("model files missing") && err.contains("empty") && err.contains("model.bin"), "{err}");
    }

    // ---- the real model (e2e/infra/speech.sh sets CHATMESH_TEST_SPEECH_MODEL_DIR) ----

    /// One real model at a time: each test's worker would use every core.
    static REAL_MODEL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    fn real_config() -> Option<OfflineConfig> {
        let model = chatmesh_common::test_url("CHATMESH_TEST_SPEECH_MODEL_DIR")?;
        let python = std::env::var("CHATMESH_TEST_SPEECH_PYTHON").unwrap_or_else(|_| "python3".into());
        Some(config(PathBuf::from(model), PathBuf::from(python)))
    }

    /// `text` spoken by espeak-ng, converted by sox to `format` (sox output options).
    fn synthesize(dir: &Path, text: &str, format: &[&str], ext: &str) -> Vec<u8> {
        let spoken = dir.join("spoken.wav");
        let out = dir.join(format!("out.{ext}"));
        let status = std::process::Command::new("espeak-ng")
            .args(["-v", "en-us", "-s", "150", "-w"])
            .arg(&spoken)
            .arg(text)
            .status()
            .expect("espeak-ng (installed by e2e/infra/speech.sh)");
        assert!(status.success(), "espeak-ng failed");
        let status = std::process::Command::new("sox")
            .arg(&spoken)
            .args(format)
            .arg(&out)
            .status()
            .expect("sox (installed by e2e/infra/speech.sh)");
        assert!(status.success(), "sox failed");
        std::fs::read(out).unwrap()
    }

    const RAW_16K: [&str; 10] = ["-r", "16000", "-c", "1", "-b", "16", "-e", "signed-integer", "-t", "raw"];

    fn words(text: &str) -> Vec<String> {
        text.to_lowercase()
            .chars()
            .map(|c| if c.is_alphanumeric() || c == '\'' || c.is_whitespace() { c } else { ' ' })
            .collect::<String>()
            .split_whitespace()
            .map(str::to_string)
            .collect()
    }

    /// Word-level edit distance (substitutions + insertions + deletions).
    fn word_errors(reference: &[String], hypothesis: &[String]) -> usize {
        let mut row: Vec<usize> = (0..=hypothesis.len()).collect();
        for (i, r) in reference.iter().enumerate() {
            let mut prev = row[0];
            row[0] = i + 1;
            for (j, h) in hypothesis.iter().enumerate() {
                let cur = row[j + 1];
                row[j + 1] = (prev + usize::from(r != h)).min(row[j] + 1).min(cur + 1);
                prev = cur;
            }
        }
        row[hypothesis.len()]
    }

    #[test]
    fn word_error_rate_counts_edits() {
        let w = |s: &str| words(s);
        assert_eq!(word_errors(&w("hello world this is a test"), &w("Hello, world! This is a test.")), 0);
        assert_eq!(word_errors(&w("hello world this is a test"), &w("The low world is in a test.")), 4);
        assert_eq!(word_errors(&w("a b c"), &w("")), 3);
    }

    const SENTENCES: [&str; 6] = [
        "hello world this is a test",
        "the quick brown fox jumps over the lazy dog",
        "please send me the report before the meeting tomorrow morning",
        "i will call you when i arrive at the station",
        "the weather is nice today so we are going to the park",
        "can you hear me clearly on this call",
    ];

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn english_sentences_are_recognized_with_a_low_word_error_rate() {
        let Some(config) = real_config() else { return };
        let _one = REAL_MODEL.lock().await;
        let dir = tempfile::tempdir().unwrap();
        let rec = Arc::new(OfflineRecognizer::start(config));
        let loading = Instant::now();
        rec.wait_started(Duration::from_secs(180)).await.expect("the worker loads the model");
        eprintln!("model loaded in {:.1} s", loading.elapsed().as_secs_f64());
        Recognizer::ready(rec.as_ref()).await.unwrap();
        let (mut errors, mut total) = (0, 0);
        for sentence in SENTENCES {
            let raw = synthesize(dir.path(), sentence, &RAW_16K, "raw");
            let audio = crate::audio::decode(&raw, Duration::from_secs(60)).unwrap();
            let started = Instant::now();
            let t = rec.recognize(&audio).await.unwrap();
            let reference = words(sentence);
            let e = word_errors(&reference, &words(&t.text));
            eprintln!(
                "{:.2} s for {:.1} s of speech, {e}/{} errors, confidence {:?}: {sentence:?} -> {:?}",
                started.elapsed().as_secs_f64(),
                audio.duration().as_secs_f64(),
                reference.len(),
                t.confidence,
                t.text
            );
            errors += e;
            total += reference.len();
        }
        let wer = errors as f64 / total as f64;
        eprintln!("word error rate {wer:.3} ({errors}/{total})");
        assert!(wer <= 0.25, "word error rate {wer:.3} ({errors}/{total})");

        // Through the gRPC service, as a 22.05 kHz stereo WAV (downmixed and resampled here).
        let wav = synthesize(dir.path(), SENTENCES[1], &["-r", "22050", "-c", "2", "-b", "16"], "wav");
        let svc =
            Speech { recognizer: crate::SpeechRecognizer::new(rec.clone()), max_duration: Duration::from_secs(60) };
        let req = chatmesh_proto::SpeechRecognitionReq {
            request_id: "r".into(),
            speech_content: wav,
            user_id: Some("alice".into()),
            session_id: None,
        };
        let rsp = svc.speech_recognition(tonic::Request::new(req)).await.unwrap().into_inner();
        assert!(rsp.success, "{}", rsp.errmsg);
        let e = word_errors(&words(SENTENCES[1]), &words(&rsp.recognition_result));
        assert!(e <= 2, "{:?}", rsp.recognition_result);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn silence_and_white_noise_give_no_confident_text() {
        let Some(config) = real_config() else { return };
        let _one = REAL_MODEL.lock().await;
        let dir = tempfile::tempdir().unwrap();
        let rec = OfflineRecognizer::start(config);
        rec.wait_started(Duration::from_secs(180)).await.expect("the worker loads the model");
        let silence = Pcm16k::from_samples(vec![0; 3 * 16_000]);
        let noise_raw = std::process::Command::new("sox")
            .args(["-n", "-r", "16000", "-c", "1", "-b", "16", "-e", "signed-integer", "-t", "raw"])
            .arg(dir.path().join("noise.raw"))
            .args(["synth", "3", "whitenoise", "vol", "0.5"])
            .status()
            .expect("sox");
        assert!(noise_raw.success());
        let noise =
            crate::audio::decode(&std::fs::read(dir.path().join("noise.raw")).unwrap(), Duration::from_secs(60))
                .unwrap();
        for (name, audio) in [("silence", silence), ("white noise", noise)] {
            let started = Instant::now();
            let t = rec.recognize(&audio).await.unwrap();
            eprintln!(
                "{name}: {:?} (confidence {:?}) in {:.2} s",
                t.text,
                t.confidence,
                started.elapsed().as_secs_f64()
            );
            assert!(t.text.is_empty() || t.confidence.is_some_and(|c| c < 0.5), "{name} heard as {t:?}");
        }
    }

    #[tokio::test]
    async fn a_corrupt_model_is_reported_by_the_real_worker() {
        let Some(real) = real_config() else { return };
        let _one = REAL_MODEL.lock().await;
        let dir = tempfile::tempdir().unwrap();
        let rec = OfflineRecognizer::start(config(fake_model_dir(dir.path()), real.python));
        let err = rec.wait_started(Duration::from_secs(180)).await.unwrap_err();
        assert!(err.contains("cannot load the model from"), "{err}");
    }
}
