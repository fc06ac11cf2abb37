//! The gRPC codec of every vitals.v1 service: protobuf, as tonic's own,
//! with small starting buffers.
//!
//! tonic starts each stream's encode and decode buffers at 8 KiB. A
//! collector holds one long-lived stream per agent, and our messages are
//! small (an ack is a few bytes, a snapshot about 2 KiB), so those buffers
//! are most of a stream's idle memory: at 20,000 agents, 320 MiB. Starting
//! at 1 KiB, a buffer grows to the largest message it has carried and no
//! further; the size limits on messages are unchanged.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Starting size of a stream's encode and decode buffer.
pub const BUFFER: usize = 1024;
/// Encoded bytes a streaming response gathers before it yields (tonic's
/// default).
const YIELD_THRESHOLD: usize = 32 * 1024;

/// Protobuf with [`BUFFER`]-sized starting buffers.
#[derive(Debug, Clone, Copy)]
pub struct LeanCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for LeanCodec<T, U> {
    fn default() -> Self {
        LeanCodec(PhantomData)
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER, YIELD_THRESHOLD)
}

impl<T, U> Codec for LeanCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}
