//! The audio a client sends, turned into the one form every recognizer takes: 16 kHz mono
//! 16-bit samples.
//!
//! Accepted:
//! - raw 16 kHz, 16-bit, mono, little-endian PCM: what the seed's client records and sends;
//! - a WAV file (RIFF/WAVE) holding integer PCM (8, 16, 24 or 32 bits) or 32/64-bit float, any
//!   sample rate from 8 to 192 kHz, 1 to 8 channels. Other rates are resampled (windowed-sinc,
//!   polyphase), channels are averaged to mono: clients recording at 44.1/48 kHz or in stereo
//!   work without converting first. 16 kHz mono 16-bit WAV is taken as it is.
//!
//! Refused with a clear error: nothing, an odd number of raw bytes, anything longer than the
//! limit, a malformed or truncated WAV header, and compressed formats (Ogg, FLAC, MP3 with an
//! ID3 tag, AMR, WebM, MP4/M4A, compressed WAV such as A-law or ADPCM), recognised by their
//! signatures. Any other even-length bytes are raw PCM by definition.

use std::time::Duration;

use crate::error::SpeechError;

pub const SAMPLE_RATE: u32 = 16_000;

/// 16 kHz mono 16-bit samples. Debug shows the length only: speech is the user's content.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Pcm16k {
    samples: Vec<i16>,
}

impl std::fmt::Debug for Pcm16k {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pcm16k({} samples, {:?})", self.samples.len(), self.duration())
    }
}

impl Pcm16k {
    pub fn from_samples(samples: Vec<i16>) -> Self {
        Self { samples }
    }

    pub fn samples(&self) -> &[i16] {
        &self.samples
    }

    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.samples.len() as f64 / SAMPLE_RATE as f64)
    }

    /// Raw little-endian bytes, as Baidu's `format: "pcm"` and our worker take them.
    pub fn to_le_bytes(&self) -> Vec<u8> {
        self.samples.iter().flat_map(|s| s.to_le_bytes()).collect()
    }

    /// A canonical 44-byte-header WAV file (for OpenAI-compatible servers).
    pub fn to_wav(&self) -> Vec<u8> {
        let data_len = (self.samples.len() * 2) as u32;
        let mut out = Vec::with_capacity(44 + data_len as usize);
        out.extend_from_slice(b"RIFF");
        out.extend_from_slice(&(36 + data_len).to_le_bytes());
        out.extend_from_slice(b"WAVEfmt ");
        out.extend_from_slice(&16u32.to_le_bytes());
        out.extend_from_slice(&1u16.to_le_bytes()); // PCM
        out.extend_from_slice(&1u16.to_le_bytes()); // mono
        out.extend_from_slice(&SAMPLE_RATE.to_le_bytes());
        out.extend_from_slice(&(SAMPLE_RATE * 2).to_le_bytes()); // byte rate
        out.extend_from_slice(&2u16.to_le_bytes()); // block align
        out.extend_from_slice(&16u16.to_le_bytes()); // bits
        out.extend_from_slice(b"data");
        out.extend_from_slice(&data_len.to_le_bytes());
        out.extend(self.to_le_bytes());
        out
    }
}

/// Decodes what a client sent, refusing anything longer than `max`.
pub fn decode(bytes: &[u8], max: Duration) -> Result<Pcm16k, SpeechError> {
    if bytes.is_empty() {
        return Err(SpeechError::Empty);
    }
    if bytes.starts_with(b"RIFF") {
        return decode_wav(bytes, max);
    }
    if let Some(format) = compressed_format(bytes) {
        return Err(SpeechError::UnsupportedFormat(format!("{format} data")));
    }
    if !bytes.len().is_multiple_of(2) {
        return Err(SpeechError::OddLength(bytes.len()));
    }
    check_length((bytes.len() / 2) as u64, SAMPLE_RATE, max)?;
    let samples = bytes.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect();
    Ok(Pcm16k { samples })
}

/// Signatures of containers we do not decode (any of them is also an unlikely start of speech
/// PCM: four exact bytes).
fn compressed_format(bytes: &[u8]) -> Option<&'static str> {
    let sigs: [(&[u8], &str); 7] = [
        (b"OggS", "Ogg (Opus/Vorbis)"),
        (b"fLaC", "FLAC"),
        (b"#!AMR", "AMR"),
        (b"\x1a\x45\xdf\xa3", "WebM/Matroska"),
        (b"RIFX", "big-endian WAV"),
        (b"RF64", "RF64 WAV"),
        (b"ID3", "MP3"),
    ];
    if let Some((_, name)) = sigs.iter().find(|(sig, _)| bytes.starts_with(sig)) {
        return Some(name);
    }
    (bytes.len() >= 8 && &bytes[4..8] == b"ftyp").then_some("MP4/M4A")
}

fn check_length(frames: u64, rate: u32, max: Duration) -> Result<(), SpeechError> {
    let seconds = frames as f64 / rate as f64;
    if seconds > max.as_secs_f64() {
        return Err(SpeechError::TooLong { seconds, limit: max.as_secs() });
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Int,
    Float,
}

#[derive(Debug, Clone, Copy)]
struct WavFormat {
    encoding: Encoding,
    channels: u16,
    rate: u32,
    bits: u16,
    block_align: u16,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn decode_wav(bytes: &[u8], max: Duration) -> Result<Pcm16k, SpeechError> {
    let bad = |why: &str| SpeechError::BadWav(why.to_string());
    if bytes.len() < 12 {
        return Err(bad("shorter than a RIFF header"));
    }
    if &bytes[8..12] != b"WAVE" {
        return Err(bad("RIFF file is not WAVE"));
    }
    let mut format: Option<WavFormat> = None;
    let mut at = 12;
    while at + 8 <= bytes.len() {
        let id = &bytes[at..at + 4];
        let size = u32_at(bytes, at + 4);
        let body = at + 8;
        let available = bytes.len() - body;
        if id == b"data" {
            let format = format.ok_or_else(|| bad("data chunk before the fmt chunk"))?;
            // Streaming writers (ffmpeg to a pipe) leave the size at 0 or 0xFFFFFFFF.
            let streamed = (size == 0 || size == u32::MAX) && available > 0;
            let len = match size as usize {
                _ if streamed => available,
                n if n <= available => n,
                n => {
                    return Err(SpeechError::BadWav(format!(
                        "data chunk declares {n} bytes but only {available} follow (truncated file)"
                    )));
                }
            };
            let data = &bytes[body..body + len];
            if !data.len().is_multiple_of(format.block_align as usize) {
                return Err(SpeechError::BadWav(format!(
                    "{} data bytes are not whole frames of {} bytes",
                    data.len(),
                    format.block_align
                )));
            }
            return convert(format, data, max);
        }
        if size as usize > available {
            return Err(SpeechError::BadWav(format!(
                "chunk {:?} declares {size} bytes but only {available} follow (truncated file)",
                String::from_utf8_lossy(id)
            )));
        }
        if id == b"fmt " {
            format = Some(parse_fmt(&bytes[body..body + size as usize])?);
        }
        // Chunks are padded to an even length.
        at = body + size as usize + (size as usize & 1);
    }
    Err(if format.is_some() { bad("no data chunk") } else { bad("no fmt chunk") })
}

fn parse_fmt(fmt: &[u8]) -> Result<WavFormat, SpeechError> {
    let bad = |why: String| SpeechError::BadWav(why);
    if fmt.len() < 16 {
        return Err(bad(format!("fmt chunk of {} bytes, at least 16 expected", fmt.len())));
    }
    let mut tag = u16_at(fmt, 0);
    let channels = u16_at(fmt, 2);
    let rate = u32_at(fmt, 4);
    let block_align = u16_at(fmt, 12);
    let bits = u16_at(fmt, 14);
    if tag == 0xFFFE {
        // WAVE_FORMAT_EXTENSIBLE: the real format is the first two bytes of the sub-format GUID.
        if fmt.len() < 40 {
            return Err(bad("WAVE_FORMAT_EXTENSIBLE fmt chunk shorter than 40 bytes".into()));
        }
        tag = u16_at(fmt, 24);
    }
    let encoding = match (tag, bits) {
        (1, 8 | 16 | 24 | 32) => Encoding::Int,
        (3, 32 | 64) => Encoding::Float,
        (1 | 3, _) => return Err(SpeechError::UnsupportedFormat(format!("WAV with {bits}-bit samples"))),
        (6, _) => return Err(SpeechError::UnsupportedFormat("A-law WAV".into())),
        (7, _) => return Err(SpeechError::UnsupportedFormat("mu-law WAV".into())),
        (other, _) => return Err(SpeechError::UnsupportedFormat(format!("WAV encoding 0x{other:04x} (compressed)"))),
    };
    if !(1..=8).contains(&channels) {
        return Err(bad(format!("{channels} channels (1 to 8 accepted)")));
    }
    if !(8_000..=192_000).contains(&rate) {
        return Err(bad(format!("sample rate {rate} Hz (8000 to 192000 accepted)")));
    }
    if block_align as u32 != channels as u32 * (bits as u32 / 8) {
        return Err(bad(format!("block align {block_align} does not match {channels} channels of {bits} bits")));
    }
    Ok(WavFormat { encoding, channels, rate, bits, block_align })
}

fn convert(f: WavFormat, data: &[u8], max: Duration) -> Result<Pcm16k, SpeechError> {
    let frames = data.len() / f.block_align as usize;
    if frames == 0 {
        return Err(SpeechError::Empty);
    }
    check_length(frames as u64, f.rate, max)?;
    if f.encoding == Encoding::Int && f.bits == 16 && f.channels == 1 && f.rate == SAMPLE_RATE {
        let samples = data.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect();
        return Ok(Pcm16k { samples });
    }
    let width = f.bits as usize / 8;
    let sample = |b: &[u8]| -> f32 {
        match (f.encoding, width) {
            (Encoding::Int, 1) => (b[0] as f32 - 128.0) / 128.0, // 8-bit WAV is unsigned
            (Encoding::Int, 2) => i16::from_le_bytes([b[0], b[1]]) as f32 / 32768.0,
            (Encoding::Int, 3) => (i32::from_le_bytes([0, b[0], b[1], b[2]]) >> 8) as f32 / 8_388_608.0,
            (Encoding::Int, _) => (i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64 / 2_147_483_648.0) as f32,
            (Encoding::Float, 4) => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            (Encoding::Float, _) => f64::from_le_bytes(b[..8].try_into().expect("8 bytes")) as f32,
        }
    };
    let mono: Vec<f32> = data
        .chunks_exact(f.block_align as usize)
        .map(|frame| frame.chunks_exact(width).map(sample).sum::<f32>() / f.channels as f32)
        .collect();
    let resampled = if f.rate == SAMPLE_RATE { mono } else { resample(&mono, f.rate, SAMPLE_RATE) };
    let samples = resampled
        .into_iter()
        .map(|x| {
            let x = if x.is_finite() { x.clamp(-1.0, 1.0) } else { 0.0 };
            (x * 32767.0).round() as i16
        })
        .collect();
    Ok(Pcm16k { samples })
}

/// Zero crossings of the windowed-sinc kernel on each side (at the lower of the two rates).
const HALF_ZEROS: f64 = 16.0;

/// Band-limited resampling: each output sample is a Hann-windowed sinc interpolation of the
/// input, with the cut-off at the lower Nyquist frequency (so downsampling does not alias).
/// For rational ratios with few phases (every common rate) the kernels are computed once per
/// phase.
pub fn resample(input: &[f32], from: u32, to: u32) -> Vec<f32> {
    if input.is_empty() || from == to {
        return input.to_vec();
    }
    let g = gcd(from, to);
    let (up, down) = ((to / g) as usize, (from / g) as usize);
    let ratio = to as f64 / from as f64;
    let cutoff = ratio.min(1.0) * 0.97; // a little below Nyquist: the window's transition band
    let half = (HALF_ZEROS / ratio.min(1.0)).ceil() as isize; // input samples each side
    let out_len = ((input.len() as f64) * ratio).round() as usize;
    let table: Option<Vec<Vec<f32>>> =
        (up <= 4096).then(|| (0..up).map(|p| kernel(p as f64 / up as f64, half, cutoff)).collect());
    let mut out = Vec::with_capacity(out_len);
    for n in 0..out_len {
        // Output n sits at input position n * down / up = base + phase / up.
        let pos = n * down;
        let (base, phase) = ((pos / up) as isize, pos % up);
        let computed;
        let taps = match &table {
            Some(t) => &t[phase],
            None => {
                computed = kernel(phase as f64 / up as f64, half, cutoff);
                &computed
            }
        };
        let first = base - half + 1;
        let mut acc = 0.0f32;
        for (j, w) in taps.iter().enumerate() {
            let k = first + j as isize;
            if k >= 0 && (k as usize) < input.len() {
                acc += input[k as usize] * w;
            }
        }
        out.push(acc);
    }
    out
}

/// The 2*half taps for an output at fractional position `frac` after input sample `base`,
/// normalised to unit DC gain. Tap j weighs input sample base - half + 1 + j.
fn kernel(frac: f64, half: isize, cutoff: f64) -> Vec<f32> {
    let mut taps: Vec<f64> = (0..2 * half)
        .map(|j| {
            let d = frac + (half - 1 - j) as f64; // distance from the output position
            let x = cutoff * d;
            let sinc = if x.abs() < 1e-9 { 1.0 } else { (std::f64::consts::PI * x).sin() / (std::f64::consts::PI * x) };
            let window = 0.5 + 0.5 * (std::f64::consts::PI * d / half as f64).cos();
            if d.abs() >= half as f64 { 0.0 } else { sinc * window }
        })
        .collect();
    let sum: f64 = taps.iter().sum();
    taps.iter_mut().for_each(|t| *t /= sum);
    taps.into_iter().map(|t| t as f32).collect()
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const MAX: Duration = Duration::from_secs(60);

    /// A WAV file with the given format tag and raw sample bytes.
    pub fn wav(tag: u16, channels: u16, rate: u32, bits: u16, data: &[u8]) -> Vec<u8> {
        let align = channels * bits / 8;
        let mut out = Vec::new();
        out.extend_from_slice(b"RIFF");
        out.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
        out.extend_from_slice(b"WAVEfmt ");
        out.extend_from_slice(&16u32.to_le_bytes());
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&channels.to_le_bytes());
        out.extend_from_slice(&rate.to_le_bytes());
        out.extend_from_slice(&(rate * align as u32).to_le_bytes());
        out.extend_from_slice(&align.to_le_bytes());
        out.extend_from_slice(&bits.to_le_bytes());
        out.extend_from_slice(b"data");
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(data);
        out
    }

    fn tone(freq: f64, rate: u32, seconds: f64, amplitude: f64) -> Vec<f64> {
        let n = (rate as f64 * seconds) as usize;
        (0..n).map(|i| amplitude * (2.0 * std::f64::consts::PI * freq * i as f64 / rate as f64).sin()).collect()
    }

    fn rms(x: &[i16]) -> f64 {
        (x.iter().map(|&s| (s as f64 / 32768.0).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
    }

    /// Sign changes per second / 2 = the dominant frequency of a pure tone.
    fn frequency(x: &[i16]) -> f64 {
        let crossings = x.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count();
        crossings as f64 / 2.0 / (x.len() as f64 / SAMPLE_RATE as f64)
    }

    #[test]
    fn raw_pcm_is_taken_as_is_and_odd_lengths_refused() {
        let pcm = decode(&[1, 0, 0xff, 0xff, 0, 0x80], MAX).unwrap();
        assert_eq!(pcm.samples(), [1, -1, i16::MIN]);
        assert!(matches!(decode(&[1, 2, 3], MAX), Err(SpeechError::OddLength(3))));
        assert!(matches!(decode(&[], MAX), Err(SpeechError::Empty)));
    }

    #[test]
    fn length_limit_applies_to_raw_and_wav() {
        let three_s = vec![0u8; 3 * 32_000];
        assert!(decode(&three_s, Duration::from_secs(3)).is_ok());
        let three_s_and_a_bit = vec![0u8; 3 * 32_000 + 2];
        let err = decode(&three_s_and_a_bit, Duration::from_secs(3)).unwrap_err();
        assert_eq!(err.to_string(), "speech is 3.0 s long; at most 3 s is accepted");
        // 4 s of 48 kHz stereo: counted in time, not bytes.
        let long = wav(1, 2, 48_000, 16, &vec![0u8; 4 * 48_000 * 4]);
        assert!(matches!(decode(&long, Duration::from_secs(3)), Err(SpeechError::TooLong { limit: 3, .. })));
    }

    #[test]
    fn wav_16k_mono_round_trips() {
        let pcm = Pcm16k::from_samples(vec![0, 1000, -1000, i16::MAX, i16::MIN]);
        let wav = pcm.to_wav();
        assert_eq!(wav.len(), 44 + 10);
        assert_eq!(decode(&wav, MAX).unwrap(), pcm);
    }

    #[test]
    fn malformed_wav_headers_are_refused_clearly() {
        let good = Pcm16k::from_samples(vec![1; 100]).to_wav();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"RIFF\x00\x00".to_vec(), "shorter than a RIFF header"),
            ([b"RIFF\x10\x00\x00\x00AVI ".as_slice(), &[0; 8]].concat(), "not WAVE"),
            (good[..40].to_vec(), "no data chunk"),
            (good[..60].to_vec(), "truncated"),
            (wav(1, 1, 16_000, 16, &[1, 2, 3]), "not whole frames"),
            (wav(1, 0, 16_000, 16, &[0; 4]), "0 channels"),
            (wav(1, 1, 1_000, 16, &[0; 4]), "sample rate 1000"),
            ([&good[..12], &good[36..]].concat(), "before the fmt chunk"),
        ];
        for (bytes, want) in cases {
            let err = decode(&bytes, MAX).unwrap_err();
            assert!(matches!(err, SpeechError::BadWav(_)), "{want}: {err:?}");
            assert!(err.to_string().contains(want), "{want}: {err}");
        }
    }

    #[test]
    fn compressed_audio_is_refused_with_its_name() {
        for (bytes, name) in [
            (b"OggS\x00\x02rest-of-it".as_slice(), "Ogg"),
            (b"ID3\x04\x00\x00\x00\x00", "MP3"),
            (b"\x00\x00\x00\x20ftypM4A ", "MP4"),
            (b"#!AMR\n\x00\x00", "AMR"),
        ] {
            let err = decode(bytes, MAX).unwrap_err();
            assert!(matches!(err, SpeechError::UnsupportedFormat(_)) && err.to_string().contains(name), "{err}");
        }
        let alaw = wav(6, 1, 8_000, 8, &[0; 16]);
        assert!(decode(&alaw, MAX).unwrap_err().to_string().contains("A-law"));
        let twelve_bit = wav(1, 1, 16_000, 12, &[0; 16]);
        assert!(matches!(decode(&twelve_bit, MAX), Err(SpeechError::UnsupportedFormat(_))));
    }

    #[test]
    fn extra_chunks_and_streamed_sizes_are_accepted() {
        let pcm = Pcm16k::from_samples(vec![5, -5, 7]);
        let plain = pcm.to_wav();
        // A LIST chunk of odd length (padded) between fmt and data.
        let list = [b"LIST\x03\x00\x00\x00abc\x00".as_slice()].concat();
        let with_list = [&plain[..36], &list, &plain[36..]].concat();
        assert_eq!(decode(&with_list, MAX).unwrap(), pcm);
        // ffmpeg writing to a pipe cannot seek back to fill in sizes.
        let mut streamed = plain.clone();
        streamed[40..44].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&streamed, MAX).unwrap(), pcm);
    }

    #[test]
    fn stereo_48k_is_downmixed_and_resampled_keeping_pitch_and_level() {
        // Left and right carry the same 440 Hz tone: the downmix must keep it whole.
        let t = tone(440.0, 48_000, 1.0, 0.5);
        let data: Vec<u8> = t.iter().flat_map(|&x| ((x * 32767.0) as i16).to_le_bytes().repeat(2)).collect();
        let pcm = decode(&wav(1, 2, 48_000, 16, &data), MAX).unwrap();
        assert_eq!(pcm.samples().len(), 16_000);
        let f = frequency(pcm.samples());
        assert!((f - 440.0).abs() < 3.0, "{f} Hz");
        let level = rms(pcm.samples());
        assert!((level - 0.5 / 2f64.sqrt()).abs() < 0.01, "rms {level}");
    }

    #[test]
    fn upsampling_and_odd_rates_keep_the_tone() {
        for (rate, bits, tag) in [(8_000u32, 16u16, 1u16), (44_100, 24, 1), (22_050, 32, 3), (11_025, 8, 1)] {
            let t = tone(1000.0, rate, 0.5, 0.6);
            let data: Vec<u8> = t
                .iter()
                .flat_map(|&x| match (tag, bits) {
                    (1, 8) => vec![((x * 127.0) + 128.0) as u8],
                    (1, 16) => ((x * 32767.0) as i16).to_le_bytes().to_vec(),
                    (1, 24) => (((x * 8_388_607.0) as i32).to_le_bytes()[..3]).to_vec(),
                    _ => (x as f32).to_le_bytes().to_vec(),
                })
                .collect();
            let pcm = decode(&wav(tag, 1, rate, bits, &data), MAX).unwrap();
            assert!((pcm.samples().len() as i64 - 8_000).abs() <= 1, "{rate} Hz: {}", pcm.samples().len());
            // Ignore the edges, where the kernel runs off the signal.
            let middle = &pcm.samples()[800..7_200];
            let f = frequency(middle);
            assert!((f - 1000.0).abs() < 5.0, "{rate} Hz/{bits} bits: {f} Hz");
            let level = rms(middle);
            assert!((level - 0.6 / 2f64.sqrt()).abs() < 0.02, "{rate} Hz/{bits} bits: rms {level}");
        }
    }

    #[test]
    fn downsampling_removes_what_16k_cannot_carry() {
        // 12 kHz is above the 8 kHz Nyquist limit of 16 kHz audio: without the low-pass it
        // would fold back to 4 kHz at full level.
        let t = tone(12_000.0, 48_000, 0.5, 0.5);
        let data: Vec<u8> = t.iter().flat_map(|&x| ((x * 32767.0) as i16).to_le_bytes()).collect();
        let pcm = decode(&wav(1, 1, 48_000, 16, &data), MAX).unwrap();
        let level = rms(&pcm.samples()[400..7_600]);
        assert!(level < 0.5 / 2f64.sqrt() / 100.0, "aliased energy: rms {level}");
    }
}
