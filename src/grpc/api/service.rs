//! The `siglip.v1.Siglip` service: each RPC counted (`grpc::calls`), converted (`convert`) and
//! handed to the core; Upload and Stream keep their protocols in their own modules.

use std::{pin::Pin, sync::Arc, time::Instant};

use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::{convert, lifecycle::Lifecycle, pb, stream, upload};
use crate::error::Error;
use crate::grpc::calls::{observed, record};
use crate::infer::Timings;
use crate::model::scores::Embeddings;

pub(in crate::grpc) struct SiglipService {
    lifecycle: Arc<Lifecycle>,
}

impl SiglipService {
    pub(in crate::grpc) fn new(lifecycle: Arc<Lifecycle>) -> Self {
        Self { lifecycle }
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<pb::StreamResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::siglip_server::Siglip for SiglipService {
    async fn classify(
        &self,
        request: Request<pb::ClassifyRequest>,
    ) -> Result<Response<pb::ClassifyResponse>, Status> {
        observed("Classify", self.classify_call(request)).await
    }

    async fn upload(
        &self,
        request: Request<Streaming<pb::UploadRequest>>,
    ) -> Result<Response<pb::ClassifyResponse>, Status> {
        observed("Upload", upload::classify(&self.lifecycle, request)).await
    }

    type StreamStream = ResponseStream;

    /// Counted when the stream ends (in `stream::run`), or here when it cannot start.
    async fn stream(
        &self,
        request: Request<Streaming<pb::StreamRequest>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let started = Instant::now();
        let opened = self.stream_call(request).await;
        if let Err(status) = &opened {
            record("Stream", status, started);
        }
        opened
    }

    async fn embed_image(
        &self,
        request: Request<pb::EmbedImageRequest>,
    ) -> Result<Response<pb::EmbedResponse>, Status> {
        observed("EmbedImage", self.embed_image_call(request)).await
    }

    async fn embed_text(
        &self,
        request: Request<pb::EmbedTextRequest>,
    ) -> Result<Response<pb::EmbedResponse>, Status> {
        observed("EmbedText", self.embed_text_call(request)).await
    }

    async fn get_model_info(
        &self,
        request: Request<pb::GetModelInfoRequest>,
    ) -> Result<Response<pb::ModelInfo>, Status> {
        observed("GetModelInfo", self.get_model_info_call(request)).await
    }
}

/// The handlers proper; the trait implementation above adds metrics and logs around them.
impl SiglipService {
    async fn classify_call(
        &self,
        request: Request<pb::ClassifyRequest>,
    ) -> Result<Response<pb::ClassifyResponse>, Status> {
        let infer = self.lifecycle.infer()?;
        let deadline = convert::deadline(request.metadata(), self.lifecycle.limits.request_timeout);
        let req = request.into_inner();
        let image = convert::image(req.image)?;
        let filter = convert::filter(req.options)?;
        let result =
            convert::with_deadline(deadline, infer.classify(image, req.texts, filter, deadline))
                .await?;
        Ok(Response::new(pb::ClassifyResponse {
            scores: convert::scores(result.scores),
            timings: Some(convert::timings(result.timings)),
        }))
    }

    async fn stream_call(
        &self,
        request: Request<Streaming<pb::StreamRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        let infer = self.lifecycle.infer()?;
        let permit = Arc::clone(&self.lifecycle.streams).try_acquire_owned().map_err(|_| {
            Status::from(Error::ResourceExhausted(format!(
                "too many open streams (limit {}, --max-streams): retry later or on another replica",
                self.lifecycle.limits.max_streams
            )))
        })?;
        let output = stream::run(
            infer,
            Arc::clone(&self.lifecycle),
            request.into_inner(),
            permit,
        );
        Ok(Response::new(Box::pin(output)))
    }

    async fn embed_image_call(
        &self,
        request: Request<pb::EmbedImageRequest>,
    ) -> Result<Response<pb::EmbedResponse>, Status> {
        let infer = self.lifecycle.infer()?;
        let deadline = convert::deadline(request.metadata(), self.lifecycle.limits.request_timeout);
        let images = request
            .into_inner()
            .images
            .into_iter()
            .enumerate()
            .map(|(i, img)| convert::image(Some(img)).map_err(|e| e.about(format!("image {i}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let (embeddings, timings) =
            convert::with_deadline(deadline, infer.embed_images(images, deadline)).await?;
        Ok(Response::new(embed_response(embeddings, timings)))
    }

    async fn embed_text_call(
        &self,
        request: Request<pb::EmbedTextRequest>,
    ) -> Result<Response<pb::EmbedResponse>, Status> {
        let infer = self.lifecycle.infer()?;
        let deadline = convert::deadline(request.metadata(), self.lifecycle.limits.request_timeout);
        let texts = request.into_inner().texts;
        let (embeddings, timings) =
            convert::with_deadline(deadline, infer.embed_texts(texts, deadline)).await?;
        Ok(Response::new(embed_response(embeddings, timings)))
    }

    async fn get_model_info_call(
        &self,
        _: Request<pb::GetModelInfoRequest>,
    ) -> Result<Response<pb::ModelInfo>, Status> {
        let ready = self.lifecycle.ready()?;
        let m = ready.infer.manifest();
        Ok(Response::new(pb::ModelInfo {
            model_id: m.model_id.clone(),
            architecture: m.architecture.clone(),
            image_size: m.image.size,
            embedding_dim: m.embedding_dim as u32,
            max_text_tokens: m.text.max_length as u32,
            device: ready.on.device.clone(),
            dtype: ready.on.dtype.name().into(),
            backend: ready.on.backend.into(),
            image_convention: ready.infer.convention().name().into(),
            image_processor: ready.infer.processor().name().into(),
            random_weights: m.source.random_weights,
            server_version: env!("CARGO_PKG_VERSION").into(),
            revision: m.source.revision.clone().unwrap_or_default(),
        }))
    }
}

fn embed_response(embeddings: Embeddings, timings: Timings) -> pb::EmbedResponse {
    pb::EmbedResponse {
        embeddings: embeddings
            .rows()
            .map(|row| pb::Embedding {
                values: row.to_vec(),
            })
            .collect(),
        timings: Some(convert::timings(timings)),
    }
}
