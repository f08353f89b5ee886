// Voice messages: recorded with MediaRecorder, then decoded and resampled by Web Audio to what
// the speech service takes as it is (services/speech/src/audio.rs): a 16 kHz mono 16-bit PCM WAV.
const RATE = 16000;

export class Recorder {
  private chunks: Blob[] = [];
  private constructor(private rec: MediaRecorder, private stream: MediaStream) {
    rec.ondataavailable = (e) => e.data.size && this.chunks.push(e.data);
  }

  static async start(): Promise<Recorder> {
    if (!navigator.mediaDevices?.getUserMedia) throw new Error("this browser cannot record audio here (it needs https or localhost)");
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    const r = new Recorder(new MediaRecorder(stream), stream);
    r.rec.start();
    return r;
  }

  /** Stops and returns the recording as a 16 kHz mono WAV. */
  async stop(): Promise<Uint8Array> {
    const done = new Promise<void>((resolve) => (this.rec.onstop = () => resolve()));
    this.rec.stop();
    await done;
    this.stream.getTracks().forEach((t) => t.stop());
    const blob = new Blob(this.chunks, { type: this.rec.mimeType });
    return toWav16k(await blob.arrayBuffer());
  }

  cancel() {
    this.rec.stop();
    this.stream.getTracks().forEach((t) => t.stop());
  }
}

/** Any audio the browser can decode, as a 16 kHz mono 16-bit PCM WAV file. */
export async function toWav16k(encoded: ArrayBuffer): Promise<Uint8Array> {
  // An offline context decodes without an audio device or autoplay permission.
  const decoded = await new OfflineAudioContext(1, 1, RATE).decodeAudioData(encoded);
  const frames = Math.max(1, Math.ceil(decoded.duration * RATE));
  // One output channel: Web Audio down-mixes the input's channels.
  const offline = new OfflineAudioContext(1, frames, RATE);
  const src = offline.createBufferSource();
  src.buffer = decoded;
  src.connect(offline.destination);
  src.start();
  const mono = (await offline.startRendering()).getChannelData(0);
  return wav(mono);
}

function wav(samples: Float32Array): Uint8Array {
  const out = new DataView(new ArrayBuffer(44 + samples.length * 2));
  const text = (at: number, s: string) => [...s].forEach((c, i) => out.setUint8(at + i, c.charCodeAt(0)));
  text(0, "RIFF");
  out.setUint32(4, 36 + samples.length * 2, true);
  text(8, "WAVEfmt ");
  out.setUint32(16, 16, true);
  out.setUint16(20, 1, true); // PCM
  out.setUint16(22, 1, true); // mono
  out.setUint32(24, RATE, true);
  out.setUint32(28, RATE * 2, true);
  out.setUint16(32, 2, true);
  out.setUint16(34, 16, true);
  text(36, "data");
  out.setUint32(40, samples.length * 2, true);
  samples.forEach((s, i) => out.setInt16(44 + i * 2, Math.max(-1, Math.min(1, s)) * 0x7fff, true));
  return new Uint8Array(out.buffer);
}
