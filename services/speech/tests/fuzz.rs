//! Property-based fuzzing of the audio decoder (WAV headers and chunks from clients): whatever
//! the bytes, no panic, and either audio within the length limit or a refusal with its reason.

use std::time::Duration;

use chatmesh_speech::audio::decode;
use proptest::prelude::*;

const MAX: Duration = Duration::from_secs(5);

/// A WAV header with arbitrary fields, followed by arbitrary bytes.
fn wav(tag: u16, channels: u16, rate: u32, bits: u16, fmt_len: u32, data_len: u32, tail: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + tail.len() as u32).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&fmt_len.to_le_bytes());
    out.extend_from_slice(&tag.to_le_bytes());
    out.extend_from_slice(&channels.to_le_bytes());
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&rate.wrapping_mul(u32::from(channels)).to_le_bytes());
    out.extend_from_slice(&channels.wrapping_mul(bits / 8).to_le_bytes());
    out.extend_from_slice(&bits.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    out.extend_from_slice(tail);
    out
}

fn check(bytes: &[u8]) -> Result<(), TestCaseError> {
    match decode(bytes, MAX) {
        Ok(pcm) => prop_assert!(pcm.duration() <= MAX + Duration::from_millis(100), "{:?}", pcm.duration()),
        Err(e) => prop_assert!(!e.to_string().is_empty()),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..1024)) {
        check(&bytes)?;
        let mut riff = b"RIFF".to_vec();
        riff.extend_from_slice(&bytes);
        check(&riff)?;
    }

    #[test]
    fn hostile_wav_headers_never_panic(
        tag in prop_oneof![Just(1u16), Just(3u16), Just(0xfffe_u16), any::<u16>()],
        channels in prop_oneof![Just(0u16), Just(1u16), Just(2u16), any::<u16>()],
        rate in prop_oneof![Just(0u32), Just(8000u32), Just(16000u32), Just(48000u32), any::<u32>()],
        bits in prop_oneof![Just(0u16), Just(8u16), Just(16u16), Just(24u16), Just(32u16), any::<u16>()],
        fmt_len in prop_oneof![Just(16u32), Just(18u32), Just(40u32), any::<u32>()],
        data_len in prop_oneof![Just(0u32), Just(u32::MAX), any::<u32>()],
        tail in prop::collection::vec(any::<u8>(), 0..2048),
    ) {
        check(&wav(tag, channels, rate, bits, fmt_len, data_len, &tail))?;
    }
}
