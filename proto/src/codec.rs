//! The codec of every generated client and server: prost's, with a smaller first buffer.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// First capacity of each call's encode and decode buffers. tonic's default is 8 KiB, allocated
/// four times per call (request and reply, each side); the seed's messages are mostly a few
/// hundred bytes, and an 8 KiB block misses the allocator's per-thread cache (it takes
/// requests of up to 1,032 bytes) where 1 KiB does not. Bigger messages grow the buffer.
const BUFFER: usize = 1024;
/// tonic's default: encoded bytes handed on before the encoder yields.
const YIELD_THRESHOLD: usize = 32 * 1024;

/// prost encoding with [`BUFFER`]; named in `build.rs` as the generated code's codec.
#[derive(Debug)]
pub struct ProtoCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for ProtoCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for ProtoCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::new(BUFFER, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(BufferSettings::new(BUFFER, YIELD_THRESHOLD))
    }
}
