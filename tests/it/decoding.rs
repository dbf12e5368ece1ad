//! Requests that are not valid protobuf: the caller's error, for every service.
use crate::helpers::{spawn_app, usd_rules, PROGRAM};
use prost::bytes::{Buf, BufMut};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// A codec that sends hand-encoded bytes as they are and reads the answer's bytes.
#[derive(Debug, Clone, Copy, Default)]
struct RawBytes;

impl Codec for RawBytes {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawBytes;
    type Decoder = RawBytes;

    fn encoder(&mut self) -> RawBytes {
        RawBytes
    }

    fn decoder(&mut self) -> RawBytes {
        RawBytes
    }
}

impl Encoder for RawBytes {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawBytes {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(buf.copy_to_bytes(buf.remaining()).to_vec()))
    }
}

/// A length-delimited field (string or bytes) with a tag below 16 and fewer than 128 bytes.
fn length_delimited(tag: u8, value: &[u8]) -> Vec<u8> {
    assert!(tag < 16 && value.len() < 128);
    let mut field = vec![tag << 3 | 2, value.len() as u8];
    field.extend_from_slice(value);
    field
}

/// An int64 field with a tag below 16 and a value from 0 to 127.
fn small_varint(tag: u8, value: u8) -> Vec<u8> {
    assert!(tag < 16 && value < 128);
    vec![tag << 3, value]
}

/// Sends `message` as it is to `path`, as the client of `token`.
async fn call(channel: Channel, token: &str, path: &'static str, message: Vec<u8>) -> Status {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ASCII metadata"),
    );
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    grpc.unary(request, PathAndQuery::from_static(path), RawBytes)
        .await
        .expect_err("a message that is not valid protobuf is refused")
}

#[tokio::test]
async fn invalid_utf8_in_a_string_field_is_an_invalid_argument_and_writes_nothing() {
    let mut app = spawn_app().await;
    app.create_program(usd_rules()).await;
    let member = app.enroll().await;
    let channel = Channel::from_shared(format!("http://{}", app.address))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let not_utf8: &[u8] = b"caf\xc3\x28-\xff\xfe";
    let cases: [(&'static str, Vec<u8>); 4] = [
        (
            "/flash.loyalty.v1.Ledger/EnrollMember",
            [
                length_delimited(1, PROGRAM.as_bytes()),
                length_delimited(2, not_utf8),
            ]
            .concat(),
        ),
        (
            "/flash.loyalty.v1.Ledger/Adjust",
            [
                length_delimited(1, PROGRAM.as_bytes()),
                length_delimited(2, member.as_bytes()),
                length_delimited(3, b"adjust-1"),
                small_varint(4, 100),
                length_delimited(5, not_utf8),
                length_delimited(6, b"ops"),
            ]
            .concat(),
        ),
        (
            "/flash.loyalty.v1.Programs/CreateProgram",
            [length_delimited(1, b"other"), length_delimited(2, not_utf8)].concat(),
        ),
        // Not even a whole field: a length running past the end of the message.
        (
            "/flash.loyalty.v1.Ledger/GetMember",
            vec![1 << 3 | 2, 40, b'a'],
        ),
    ];
    for (path, message) in cases {
        let status = call(channel.clone(), &app.admin_token, path, message).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{path}: {status:?}");
        assert!(
            status.message().starts_with("request"),
            "{path}: {}",
            status.message()
        );
    }

    assert_eq!(app.row_counts().await, (0, 0), "no entry, no batch");
    let client = app.db.get().await.unwrap();
    let counts: (i64, i64) = {
        let row = client
            .query_one(
                "SELECT (SELECT count(*) FROM members), (SELECT count(*) FROM programs)",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(counts, (1, 1), "no member or program was created");
}
