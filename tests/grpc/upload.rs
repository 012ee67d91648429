//! Upload: an image sent in chunks after a header, for images over the message limit.

use siglip_serve::grpc::pb::{self, upload_request};
use tonic::Code;

use crate::common::{asset, server::Server};
use crate::{assert_close, assert_status, big_png, by_index, expected, labels, LABELS};

/// An Upload header for `total` bytes against [`LABELS`], for the default model.
pub(crate) fn header(total: usize) -> pb::UploadRequest {
    pb::UploadRequest {
        msg: Some(upload_request::Msg::Header(pb::UploadHeader {
            model: String::new(),
            texts: labels(),
            options: None,
            total_bytes: total as u64,
        })),
    }
}

pub(crate) fn chunk(bytes: &[u8]) -> pb::UploadRequest {
    pb::UploadRequest {
        msg: Some(upload_request::Msg::Chunk(bytes.to_vec())),
    }
}

#[tokio::test]
async fn upload_reassembles_an_image_over_the_message_limit() {
    let server = Server::ready(&[]).await;
    let mut client = server.client().await;
    let image = big_png(1300);
    assert!(
        image.len() > 4 << 20,
        "test image must exceed gRPC's 4 MiB default"
    );
    let mut messages = vec![header(image.len())];
    messages.extend(image.chunks(1 << 20).map(chunk));
    let response = client
        .upload(tokio_stream::iter(messages))
        .await
        .expect("upload")
        .into_inner();
    assert_close(
        &by_index(&response.scores, LABELS.len()),
        &expected(&image, &labels()),
    );
}

#[tokio::test]
async fn every_upload_protocol_violation_gets_its_status() {
    let server = Server::ready(&[]).await;
    let mut client = server.client().await;
    let small = asset("rocket.bmp");
    let violations: Vec<(&str, Vec<pb::UploadRequest>, Code, &str)> = vec![
        (
            "chunk first",
            vec![chunk(&small)],
            Code::InvalidArgument,
            "first message",
        ),
        (
            "short",
            vec![header(small.len() + 10), chunk(&small)],
            Code::InvalidArgument,
            "ended after",
        ),
        (
            "long",
            vec![header(small.len() - 10), chunk(&small)],
            Code::InvalidArgument,
            "more than",
        ),
        (
            "two headers",
            vec![
                header(small.len()),
                chunk(&small[..10]),
                header(small.len()),
            ],
            Code::InvalidArgument,
            "second header",
        ),
        (
            "no header",
            vec![],
            Code::InvalidArgument,
            "before the header",
        ),
        (
            "declared too large",
            vec![header(1 << 40)],
            Code::ResourceExhausted,
            "--max-image-bytes",
        ),
    ];
    for (name, messages, code, needle) in violations {
        let status = client
            .upload(tokio_stream::iter(messages))
            .await
            .expect_err(name);
        assert_status(name, &status, code, needle);
    }
}
