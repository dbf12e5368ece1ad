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
        use prost::bytes::Buf;
        if let Some(program) = leading_program_id(buf.chunk()) {
            super::observe::record_program(program);
        }
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

/// The `program_id` of a request, read from its encoding: every request of
/// `flash.loyalty.v1` carries it as field 1 (a string), which prost writes first. Only a
/// plausible id (a slug of at most 64 characters) is returned; the handler validates it.
fn leading_program_id(bytes: &[u8]) -> Option<&str> {
    // Field 1, wire type 2 (length-delimited), then a one-byte length.
    let (&tag, rest) = bytes.split_first()?;
    let (&len, rest) = rest.split_first()?;
    if tag != 0x0a || len == 0 || len > 64 {
        return None;
    }
    let id = std::str::from_utf8(rest.get(..usize::from(len))?).ok()?;
    id.bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        .then_some(id)
}

#[cfg(test)]
mod tests {
    use super::leading_program_id;
    use prost::Message;

    #[test]
    fn the_program_is_read_from_field_one() {
        let request = crate::grpc::proto::GetMemberRequest {
            program_id: "acme-2".into(),
            member_id: "m".into(),
        };
        assert_eq!(leading_program_id(&request.encode_to_vec()), Some("acme-2"));
        let odd = crate::grpc::proto::GetMemberRequest {
            program_id: "Not A Slug".into(),
            member_id: "m".into(),
        };
        assert_eq!(leading_program_id(&odd.encode_to_vec()), None);
        assert_eq!(leading_program_id(&[]), None);
        assert_eq!(leading_program_id(&[0x0a, 10, b'a']), None);
    }

    /// Every request message of the contract has `string program_id = 1`.
    #[test]
    fn every_request_carries_its_program_as_field_one() {
        use prost_types::field_descriptor_proto::Type;
        let set = prost_types::FileDescriptorSet::decode(crate::grpc::proto::FILE_DESCRIPTOR_SET)
            .unwrap();
        let mut requests = 0;
        for file in set
            .file
            .iter()
            .filter(|f| f.package() == "flash.loyalty.v1")
        {
            for message in file
                .message_type
                .iter()
                .filter(|m| m.name().ends_with("Request"))
            {
                requests += 1;
                let first = message.field.iter().find(|f| f.number() == 1);
                assert!(
                    first.is_some_and(|f| f.name() == "program_id" && f.r#type() == Type::String),
                    "{} has no string program_id = 1",
                    message.name()
                );
            }
        }
        assert!(requests >= 28);
    }
}
