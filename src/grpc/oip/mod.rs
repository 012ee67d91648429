//! The Open Inference Protocol (KServe v2, Triton's gRPC `inference.GRPCInferenceService`) beside
//! `siglip.v1`, on the same port, over the same core, limits and models: thin adapters from its
//! tensors to the core ([`crate::infer`]).
//!
//! - `models`: each repository model as three of the protocol's models (zero-shot, image
//!   embedding, text embedding), their names, metadata and configuration;
//! - `tensors`: BYTES inputs and raw outputs on the wire, and the `parameters` maps;
//! - `infer`: one ModelInferRequest checked and answered; `stream`: ModelStreamInfer.
//!
//! `infer::check` and `tensors` are public for the fuzz target (`fuzz/`).
//!
//! It shares the siglip.v1 API's lifecycle, limits, timeouts, error codes and stream outbox
//! (`grpc::api`); the transport (tokens, TLS, connection limits) runs both alike. Docs:
//! `docs/oip.md`.

pub mod infer;
mod models;
mod stream;
pub mod tensors;

pub use models::Kind;

use std::{pin::Pin, sync::Arc, time::Instant};

use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::api::{convert, Lifecycle};
use super::calls::{observed, record, CallModel};
use crate::infer::Flow;
use infer::Context;

/// Generated from `proto/inference/grpc_service.proto` (and its `model_config.proto`).
pub mod pb {
    tonic::include_proto!("inference");
}

/// The extensions of the protocol this server implements, as ServerMetadata lists them.
const EXTENSIONS: [&str; 3] = ["classification", "model_configuration", "parameters"];

/// The metrics' `method` of ModelStreamInfer (counted when the stream ends).
const METHOD_STREAM: &str = "ModelStreamInfer";

pub(in crate::grpc) struct InferenceService {
    lifecycle: Arc<Lifecycle>,
}

impl InferenceService {
    pub(in crate::grpc) fn new(lifecycle: Arc<Lifecycle>) -> Self {
        Self { lifecycle }
    }

    /// The model OIP name `name` stands for, noted for the call's metrics.
    fn resolve(
        &self,
        call: &CallModel,
        name: &str,
        version: &str,
    ) -> Result<(Arc<crate::repository::Served>, models::Kind), Status> {
        call.set(models::label(&self.lifecycle, name));
        models::resolve(&self.lifecycle, name, version)
    }
}

type ResponseStream =
    Pin<Box<dyn Stream<Item = Result<pb::ModelStreamInferResponse, Status>> + Send>>;

fn unimplemented<T>(method: &str) -> Result<Response<T>, Status> {
    Err(Status::unimplemented(format!(
        "{method} is not implemented by siglip-serve (it implements ServerLive, ServerReady, \
         ModelReady, ServerMetadata, ModelMetadata, ModelConfig, ModelInfer and ModelStreamInfer)"
    )))
}

#[tonic::async_trait]
impl pb::grpc_inference_service_server::GrpcInferenceService for InferenceService {
    async fn server_live(
        &self,
        _: Request<pb::ServerLiveRequest>,
    ) -> Result<Response<pb::ServerLiveResponse>, Status> {
        let call = async { Ok(Response::new(pb::ServerLiveResponse { live: true })) };
        observed("ServerLive", &CallModel::default(), call).await
    }

    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        let ready = self.lifecycle.models().is_ok_and(|models| models.ready());
        let call = async { Ok(Response::new(pb::ServerReadyResponse { ready })) };
        observed("ServerReady", &CallModel::default(), call).await
    }

    async fn model_ready(
        &self,
        request: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let model = CallModel::default();
        let r = request.into_inner();
        let ready = self.resolve(&model, &r.name, &r.version).is_ok();
        let call = async { Ok(Response::new(pb::ModelReadyResponse { ready })) };
        observed("ModelReady", &model, call).await
    }

    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        let call = async {
            Ok(Response::new(pb::ServerMetadataResponse {
                name: "siglip-serve".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                extensions: EXTENSIONS.map(String::from).to_vec(),
            }))
        };
        observed("ServerMetadata", &CallModel::default(), call).await
    }

    async fn model_metadata(
        &self,
        request: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let model = CallModel::default();
        let r = request.into_inner();
        let call = async {
            let (served, kind) = self.resolve(&model, &r.name, &r.version)?;
            Ok(Response::new(models::metadata(&r.name, &served, kind)))
        };
        observed("ModelMetadata", &model, call).await
    }

    async fn model_config(
        &self,
        request: Request<pb::ModelConfigRequest>,
    ) -> Result<Response<pb::ModelConfigResponse>, Status> {
        let model = CallModel::default();
        let r = request.into_inner();
        let call = async {
            let (served, kind) = self.resolve(&model, &r.name, &r.version)?;
            Ok(Response::new(pb::ModelConfigResponse {
                config: Some(models::config(&r.name, &served, kind)),
            }))
        };
        observed("ModelConfig", &model, call).await
    }

    async fn model_infer(
        &self,
        request: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let model = CallModel::default();
        let deadline = convert::deadline(request.metadata(), self.lifecycle.limits.request_timeout);
        let request = request.into_inner();
        let call = async {
            let (served, kind) =
                self.resolve(&model, &request.model_name, &request.model_version)?;
            let context = Context {
                flow: Flow::new(),
                deadline,
                last_labels: None,
                max_answer_bytes: self.lifecycle.limits.max_message_bytes,
            };
            let work = infer::infer(served, kind, request, context);
            convert::with_deadline(deadline, work)
                .await
                .map(Response::new)
        };
        observed("ModelInfer", &model, call).await
    }

    type ModelStreamInferStream = ResponseStream;

    /// Counted when the stream ends (in `api::stream::spawn`), or here when it cannot start.
    async fn model_stream_infer(
        &self,
        request: Request<Streaming<pb::ModelInferRequest>>,
    ) -> Result<Response<Self::ModelStreamInferStream>, Status> {
        let started = Instant::now();
        match self.lifecycle.open_stream() {
            Ok(permit) => {
                let output = stream::run(Arc::clone(&self.lifecycle), request.into_inner(), permit);
                Ok(Response::new(Box::pin(output)))
            }
            Err(status) => {
                record(METHOD_STREAM, "", &status, started);
                Err(status)
            }
        }
    }

    async fn model_statistics(
        &self,
        _: Request<pb::ModelStatisticsRequest>,
    ) -> Result<Response<pb::ModelStatisticsResponse>, Status> {
        unimplemented("ModelStatistics (see the Prometheus metrics instead)")
    }

    async fn repository_index(
        &self,
        _: Request<pb::RepositoryIndexRequest>,
    ) -> Result<Response<pb::RepositoryIndexResponse>, Status> {
        unimplemented("RepositoryIndex (siglip.v1's ListModels lists the models)")
    }

    async fn repository_model_load(
        &self,
        _: Request<pb::RepositoryModelLoadRequest>,
    ) -> Result<Response<pb::RepositoryModelLoadResponse>, Status> {
        unimplemented("RepositoryModelLoad (models load from --model-repository)")
    }

    async fn repository_model_unload(
        &self,
        _: Request<pb::RepositoryModelUnloadRequest>,
    ) -> Result<Response<pb::RepositoryModelUnloadResponse>, Status> {
        unimplemented("RepositoryModelUnload (models unload from --model-repository)")
    }

    async fn system_shared_memory_status(
        &self,
        _: Request<pb::SystemSharedMemoryStatusRequest>,
    ) -> Result<Response<pb::SystemSharedMemoryStatusResponse>, Status> {
        unimplemented("SystemSharedMemoryStatus")
    }

    async fn system_shared_memory_register(
        &self,
        _: Request<pb::SystemSharedMemoryRegisterRequest>,
    ) -> Result<Response<pb::SystemSharedMemoryRegisterResponse>, Status> {
        unimplemented("SystemSharedMemoryRegister")
    }

    async fn system_shared_memory_unregister(
        &self,
        _: Request<pb::SystemSharedMemoryUnregisterRequest>,
    ) -> Result<Response<pb::SystemSharedMemoryUnregisterResponse>, Status> {
        unimplemented("SystemSharedMemoryUnregister")
    }

    async fn cuda_shared_memory_status(
        &self,
        _: Request<pb::CudaSharedMemoryStatusRequest>,
    ) -> Result<Response<pb::CudaSharedMemoryStatusResponse>, Status> {
        unimplemented("CudaSharedMemoryStatus")
    }

    async fn cuda_shared_memory_register(
        &self,
        _: Request<pb::CudaSharedMemoryRegisterRequest>,
    ) -> Result<Response<pb::CudaSharedMemoryRegisterResponse>, Status> {
        unimplemented("CudaSharedMemoryRegister")
    }

    async fn cuda_shared_memory_unregister(
        &self,
        _: Request<pb::CudaSharedMemoryUnregisterRequest>,
    ) -> Result<Response<pb::CudaSharedMemoryUnregisterResponse>, Status> {
        unimplemented("CudaSharedMemoryUnregister")
    }

    async fn trace_setting(
        &self,
        _: Request<pb::TraceSettingRequest>,
    ) -> Result<Response<pb::TraceSettingResponse>, Status> {
        unimplemented("TraceSetting")
    }

    async fn log_settings(
        &self,
        _: Request<pb::LogSettingsRequest>,
    ) -> Result<Response<pb::LogSettingsResponse>, Status> {
        unimplemented("LogSettings")
    }
}
