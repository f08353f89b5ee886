"""chatmesh speech worker: Whisper (CTranslate2, through faster-whisper) on 16 kHz mono speech.

Started and supervised by the speech service (services/speech/src/offline.rs), which embeds this
file and runs it with `python -c`; not meant to be run by hand. One request at a time:

  stdin:  a JSON line {"id": N, "bytes": B}, then B bytes of 16 kHz mono little-endian 16-bit PCM
  stdout: a JSON line {"id": N, "text": "...", "confidence": 0.9 | null, "language": "en",
          "seconds": 0.8}, or {"id": N, "error": "..."}

The first stdout line, once the model is loaded, is {"ready": true, "pid": P} or
{"fatal": "..."} (then the worker exits). Logs go to stderr; whatever a library prints to stdout
is redirected there too, so it cannot corrupt the protocol. EOF on stdin ends the worker.
"""

import argparse
import json
import math
import os
import sys
import time


def log(message):
    print(f"speech worker: {message}", file=sys.stderr, flush=True)


def read_exact(stream, n):
    chunks = []
    while n > 0:
        chunk = stream.read(n)
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def transcribe(model, np, data, args):
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    started = time.monotonic()
    audio = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
    # No speech at all (silence, noise): answer at once, without running the model.
    if not get_speech_timestamps(audio, VadOptions()):
        return {"text": "", "confidence": None, "language": None, "seconds": round(time.monotonic() - started, 3)}
    # vad_filter: Silero VAD drops non-speech first, so silence and noise give no text (Whisper
    # alone tends to "hear" words in them). condition_on_previous_text=False and a short
    # temperature ladder keep hard inputs from looping for long.
    segments, info = model.transcribe(
        audio,
        language=args.language or None,
        beam_size=args.beam_size,
        vad_filter=True,
        condition_on_previous_text=False,
        temperature=[0.0, 0.2, 0.4, 0.6],
        # Mandarin in simplified characters with punctuation, as Baidu's model returns it.
        initial_prompt="以下是普通话的句子。" if args.language == "zh" else None,
    )
    kept = [s for s in segments if s.text.strip()]
    text = "".join(s.text for s in kept).strip()
    confidence = math.exp(sum(s.avg_logprob for s in kept) / len(kept)) if kept else None
    return {
        "text": text,
        "confidence": confidence,
        "language": info.language,
        "seconds": round(time.monotonic() - started, 3),
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--language", default="")
    parser.add_argument("--beam-size", type=int, default=5)
    args = parser.parse_args()

    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def send(obj):
        out.write(json.dumps(obj, ensure_ascii=False) + "\n")
        out.flush()

    threads = args.threads or len(os.sched_getaffinity(0))
    started = time.monotonic()
    try:
        import numpy as np
        from faster_whisper import WhisperModel

        model = WhisperModel(
            args.model_dir,
            device="cpu",
            compute_type="int8",
            cpu_threads=threads,
            num_workers=1,
            local_files_only=True,
        )
    except Exception as e:  # noqa: BLE001 - reported to the service, which logs it
        send({"fatal": f"cannot load the model from {args.model_dir}: {type(e).__name__}: {e}"})
        return 1
    log(f"model {args.model_dir} loaded in {time.monotonic() - started:.1f} s, {threads} threads")
    send({"ready": True, "pid": os.getpid()})

    stdin = sys.stdin.buffer
    while True:
        line = stdin.readline()
        if not line:
            return 0
        try:
            request = json.loads(line)
            data = read_exact(stdin, int(request["bytes"]))
        except (ValueError, KeyError, TypeError) as e:
            send({"id": None, "error": f"bad request header: {e}"})
            return 2
        if data is None:
            return 0
        try:
            reply = transcribe(model, np, data, args)
        except Exception as e:  # noqa: BLE001 - one bad request must not end the worker
            reply = {"error": f"{type(e).__name__}: {e}"}
        reply["id"] = request["id"]
        send(reply)


if __name__ == "__main__":
    sys.exit(main())
