//! Request validation from arbitrary protobuf bytes: the first byte picks the message
//! (ClassifyRequest, UploadRequest, StreamRequest, EmbedImageRequest, or the Open Inference
//! Protocol's ModelInferRequest), the rest is decoded as tonic would (prost), then checked the
//! way the RPCs check it before the model: the image (`convert::image`, its header, then decoded
//! and preprocessed), the options (`convert::filter`), a stream's config
//! (`settings::from_config`) and a frame's regions, the labels (`Limits::check_texts`), an
//! Upload's declared size; a ModelInferRequest's parameters, outputs and BYTES tensors
//! (`oip::infer::check`, for the kind its model name gives), then its images. Bytes that are not
//! the message, and every refusal, must be a client error, never a crash or INTERNAL.
#![no_main]

mod common;

use std::sync::Arc;

use common::{assert_answered, IMAGE_LIMITS};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use siglip_serve::error::Error;
use siglip_serve::grpc::api::chunks::{Budget, Reassembly};
use siglip_serve::grpc::api::{convert, stream::settings};
use siglip_serve::grpc::oip::{self, pb::ModelInferRequest, Kind};
use siglip_serve::grpc::pb;
use siglip_serve::infer::{ImageInput, Limits};
use siglip_serve::model::image::{Convention, ImageProcessor, Preprocess};

const LIMITS: Limits = Limits {
    image: IMAGE_LIMITS,
    max_texts: 16,
    max_text_bytes: 256,
    max_images: 4,
    ..Limits::DEFAULT
};

fuzz_target!(
    init: common::keep_caught_panics(),
    |data: &[u8]| {
        let Some((&kind, message)) = data.split_first() else {
            return;
        };
        // A message tonic cannot decode is answered INVALID_ARGUMENT (`grpc::status`); here it
        // only has to fail cleanly.
        let checked = match kind % 5 {
            0 => pb::ClassifyRequest::decode(message).map(classify),
            1 => pb::UploadRequest::decode(message).map(upload),
            2 => pb::StreamRequest::decode(message).map(stream),
            3 => pb::EmbedImageRequest::decode(message).map(embed_image),
            _ => ModelInferRequest::decode(message).map(model_infer),
        };
        if let Ok(Err(e)) = checked {
            assert_answered(e);
        }
    }
);

fn classify(req: pb::ClassifyRequest) -> Result<(), Error> {
    let image = convert::image(req.image)?;
    // A patch budget takes the SigLIP 2 NaFlex path (its transparency rule, its patches).
    let naflex = req.options.is_some_and(|o| o.max_num_patches != 0);
    convert::filter(req.options)?;
    LIMITS.check_texts(&req.texts)?;
    let prep = if naflex {
        common::naflex(ImageProcessor::Pil)
    } else {
        common::preprocess(ImageProcessor::Pil)
    };
    prepare(image, Convention::Processor, &prep)
}

fn upload(req: pb::UploadRequest) -> Result<(), Error> {
    match req.msg {
        Some(pb::upload_request::Msg::Header(header)) => {
            LIMITS.check_texts(&header.texts)?;
            convert::filter(header.options)?;
            let budget = Budget::new(LIMITS.image.max_bytes);
            Reassembly::declared(header.total_bytes, LIMITS.image.max_bytes, budget)
                .map_err(|e| e.into_error("Upload"))?;
        }
        // A chunk alone is the reassembly target's.
        Some(pb::upload_request::Msg::Chunk(_)) | None => {}
    }
    Ok(())
}

fn stream(req: pb::StreamRequest) -> Result<(), Error> {
    match req.msg {
        Some(pb::stream_request::Msg::Config(config)) => {
            settings::from_config(&config, LIMITS.max_regions)?;
            LIMITS.check_texts(&config.texts)
        }
        Some(pb::stream_request::Msg::Frame(frame)) if frame.image.is_some() => {
            let image = convert::image(frame.image)?;
            if frame.regions.is_empty() {
                return prepare(
                    image,
                    Convention::Pipeline,
                    &common::preprocess(ImageProcessor::Pil),
                );
            }
            // As `Infer::classify_frame` does: the shape first, then decoding and the crops.
            let regions = settings::regions(&frame.regions, LIMITS.max_regions)?;
            image.declared_pixels(&LIMITS.image)?;
            image.prepare_regions(
                &LIMITS.image,
                Convention::Pipeline,
                &common::preprocess(ImageProcessor::Pil),
                &regions,
            )?;
            Ok(())
        }
        // One chunk that is the whole frame (`last`); longer sequences are the reassembly
        // target's.
        Some(pb::stream_request::Msg::Frame(frame)) if frame.last => {
            let budget = Budget::new(LIMITS.image.max_bytes);
            let mut image = Reassembly::open(LIMITS.image.max_bytes, Arc::clone(&budget));
            let bytes = image
                .push(&frame.chunk)
                .and_then(|()| image.finish())
                .map_err(|e| e.into_error("Stream"))?;
            prepare(
                ImageInput::Encoded(bytes),
                Convention::Pipeline,
                &common::preprocess(ImageProcessor::Pil),
            )
        }
        Some(pb::stream_request::Msg::Frame(_)) | None => Ok(()),
    }
}

fn embed_image(req: pb::EmbedImageRequest) -> Result<(), Error> {
    // The count is checked before any image (`Infer::embed_images`).
    if req.images.is_empty() || req.images.len() > LIMITS.max_images {
        return Ok(());
    }
    for (i, img) in req.images.into_iter().enumerate() {
        let image = convert::image(Some(img)).map_err(|e| e.about(format!("image {i}")))?;
        prepare(
            image,
            Convention::Processor,
            &common::preprocess(ImageProcessor::Torchvision),
        )
        .map_err(|e| e.about(format!("image {i}")))?;
    }
    Ok(())
}

fn model_infer(mut req: ModelInferRequest) -> Result<(), Error> {
    // Model names are the server's to resolve; the fuzzer picks a kind from the name's length.
    let kind = Kind::ALL[req.model_name.len() % Kind::ALL.len()];
    let checked = oip::infer::check(&mut req, kind, &LIMITS)?;
    if kind != Kind::ImageEmbedding {
        LIMITS.check_texts(&checked.texts)?;
    }
    if kind != Kind::TextEmbedding {
        // As `Infer::embed_images` does: admitted as a whole, then each image.
        for (i, image) in checked.images.into_iter().enumerate() {
            prepare(
                image,
                Convention::Processor,
                &common::preprocess(ImageProcessor::Pil),
            )
            .map_err(|e| e.about(format!("image {i}")))?;
        }
    }
    Ok(())
}

/// As `Infer::preprocess` does: the header first (admission charges by it), then the pixels.
/// Embedded images take the torchvision backend's path (its raw RGBA composite under the
/// processor convention), the others the PIL backend's.
fn prepare(image: ImageInput, convention: Convention, prep: &Preprocess) -> Result<(), Error> {
    image.declared_pixels(&LIMITS.image)?;
    image.prepare(&LIMITS.image, convention, prep)?;
    Ok(())
}
