//! The `siglip.v1.Siglip` service: each RPC counted (`grpc::calls`), converted (`convert`) and
//! handed to the core of the model it names (`repository`); Upload and Stream keep their
//! protocols in their own modules, ListModels and GetModelInfo are in `models`.

use std::{pin::Pin, sync::Arc, time::Instant};

use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::{convert, lifecycle::Lifecycle, models, pb, stream, upload};
use crate::grpc::calls::{observed, record, CallModel};
use crate::infer::Timings;
use crate::model::scores::Embeddings;
use crate::repository::Served;

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
        let model = CallModel::default();
        observed("Classify", &model, self.classify_call(&model, request)).await
    }

    async fn upload(
        &self,
        request: Request<Streaming<pb::UploadRequest>>,
    ) -> Result<Response<pb::ClassifyResponse>, Status> {
        let model = CallModel::default();
        let call = upload::classify(&self.lifecycle, &model, request);
        observed("Upload", &model, call).await
    }

    type StreamStream = ResponseStream;

    /// Counted when the stream ends (in `stream::spawn`), or here when it cannot start.
    async fn stream(
        &self,
        request: Request<Streaming<pb::StreamRequest>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let started = Instant::now();
        let opened = self.stream_call(request).await;
        if let Err(status) = &opened {
            record("Stream", "", status, started);
        }
        opened
    }

    async fn embed_image(
        &self,
        request: Request<pb::EmbedImageRequest>,
    ) -> Result<Response<pb::EmbedResponse>, Status> {
        let model = CallModel::default();
        observed("EmbedImage", &model, self.embed_image_call(&model, request)).await
    }

    async fn embed_text(
        &self,
        request: Request<pb::EmbedTextRequest>,
    ) -> Result<Response<pb::EmbedResponse>, Status> {
        let model = CallModel::default();
        observed("EmbedText", &model, self.embed_text_call(&model, request)).await
    }

    async fn get_model_info(
        &self,
        request: Request<pb::GetModelInfoRequest>,
    ) -> Result<Response<pb::ModelInfo>, Status> {
        let model = CallModel::default();
        let name = request.get_ref().model.clone();
        model.set(self.lifecycle.label(&name));
        let call = async { models::info(&self.lifecycle, &name).map(Response::new) };
        observed("GetModelInfo", &model, call).await
    }

    async fn list_models(
        &self,
        _: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        let call = async { models::list(&self.lifecycle).map(Response::new) };
        observed("ListModels", &CallModel::default(), call).await
    }
}

/// The handlers proper; the trait implementation above adds metrics and logs around them.
impl SiglipService {
    /// The model `name` names, noted for the call's metrics.
    fn model(&self, call: &CallModel, name: &str) -> Result<Arc<Served>, Status> {
        call.set(self.lifecycle.label(name));
        self.lifecycle.model(name)
    }

    async fn classify_call(
        &self,
        model: &CallModel,
        request: Request<pb::ClassifyRequest>,
    ) -> Result<Response<pb::ClassifyResponse>, Status> {
        let deadline = convert::deadline(request.metadata(), self.lifecycle.limits.request_timeout);
        let req = request.into_inner();
        let served = self.model(model, &req.model)?;
        let infer = &served.infer;
        let image = convert::image(req.image)?;
        let filter = convert::filter(req.options)?;
        let prep = infer.preprocessing(convert::options_patches(req.options))?;
        let classify = infer.classify(image, req.texts, filter, &prep, deadline);
        let result = convert::with_deadline(deadline, classify).await?;
        Ok(Response::new(pb::ClassifyResponse {
            scores: convert::scores(result.scores),
            timings: Some(convert::timings(result.timings)),
        }))
    }

    async fn stream_call(
        &self,
        request: Request<Streaming<pb::StreamRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        let permit = self.lifecycle.open_stream()?;
        let output = stream::run(Arc::clone(&self.lifecycle), request.into_inner(), permit);
        Ok(Response::new(Box::pin(output)))
    }

    async fn embed_image_call(
        &self,
        model: &CallModel,
        request: Request<pb::EmbedImageRequest>,
    ) -> Result<Response<pb::EmbedResponse>, Status> {
        let deadline = convert::deadline(request.metadata(), self.lifecycle.limits.request_timeout);
        let req = request.into_inner();
        let served = self.model(model, &req.model)?;
        let infer = &served.infer;
        let images = req
            .images
            .into_iter()
            .enumerate()
            .map(|(i, img)| convert::image(Some(img)).map_err(|e| e.about(format!("image {i}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let prep = infer.preprocessing(convert::max_patches(req.max_num_patches))?;
        let embed = infer.embed_images(images, &prep, deadline);
        let (embeddings, timings) = convert::with_deadline(deadline, embed).await?;
        Ok(Response::new(embed_response(embeddings, timings)))
    }

    async fn embed_text_call(
        &self,
        model: &CallModel,
        request: Request<pb::EmbedTextRequest>,
    ) -> Result<Response<pb::EmbedResponse>, Status> {
        let deadline = convert::deadline(request.metadata(), self.lifecycle.limits.request_timeout);
        let req = request.into_inner();
        let served = self.model(model, &req.model)?;
        let infer = &served.infer;
        let texts = req.texts;
        let (embeddings, timings) =
            convert::with_deadline(deadline, infer.embed_texts(texts, deadline)).await?;
        Ok(Response::new(embed_response(embeddings, timings)))
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
