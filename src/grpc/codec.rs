//! The protobuf codec of our services: prost's, except that a message that cannot be
//! decoded (invalid UTF-8 in a string field, a truncated field, a wrong wire type) is the
//! caller's error — INVALID_ARGUMENT — where `tonic_prost::ProstCodec` answers INTERNAL.
//! `build.rs` names it with `codec_path`, so every generated server and client uses it.
//! (A client that cannot decode a response therefore also sees INVALID_ARGUMENT; our
//! clients are tests and tools that talk to this server.)
use prost::Message;
use std::marker::PhantomData;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::Status;
use tonic_prost::ProstEncoder;

/// Encodes `T` as prost does; decodes `U`, answering INVALID_ARGUMENT when it cannot.
#[derive(Debug, Clone)]
pub struct ProtoCodec<T, U> {
    _messages: PhantomData<(T, U)>,
}

impl<T, U> Default for ProtoCodec<T, U> {
    fn default() -> Self {
        Self {
            _messages: PhantomData,
        }
    }
}

impl<T, U> Codec for ProtoCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProtoDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProtoDecoder {
            _message: PhantomData,
        }
    }
}

/// Decodes `U`; a malformed message is INVALID_ARGUMENT naming what prost found wrong.
#[derive(Debug, Clone)]
pub struct ProtoDecoder<U> {
    _message: PhantomData<U>,
}

impl<U: Message + Default> Decoder for ProtoDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(|error| {
            Status::invalid_argument(format!(
                "request: is not a valid protobuf message, so nothing was done ({error})"
            ))
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}
