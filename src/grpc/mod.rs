//! The gRPC server: `siglip.v1.Siglip` ([`api`]), the Open Inference Protocol's
//! `inference.GRPCInferenceService` ([`oip`]), `grpc.health.v1` and server reflection on one
//! listener whose connections [`transport`] runs. It serves whatever models it is handed
//! ([`GrpcServer::serve`]) and knows nothing of how they are loaded (see `server`,
//! `repository`).
//!
//! The two layers do not import each other; what both need of the calls (counting them by
//! method and code) is `calls`.

pub mod api;
mod calls;
pub mod oip;
mod traced;
pub mod transport;

use std::{sync::Arc, time::Duration};

use ::metrics::gauge;
use anyhow::Context;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic_health::{server::HealthReporter, ServingStatus};

use crate::metrics;
use crate::repository::Repository;
use api::{CallLimits, Lifecycle, MalformedCalls, SiglipService};
use transport::{Authorize, Connection, Security};

/// Generated from `proto/siglip/v1/siglip.proto`.
pub mod pb {
    tonic::include_proto!("siglip.v1");

    /// For server reflection (both APIs).
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("siglip_descriptor");
}

/// The health-service names this server reports: overall (`""`), the API itself, and each model
/// as `siglip.v1.Siglip/<model>`.
const SERVICE_NAME: &str = "siglip.v1.Siglip";

/// The gRPC server, running on its own task.
pub struct GrpcServer {
    lifecycle: Arc<Lifecycle>,
    health: HealthReporter,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    stop: oneshot::Sender<()>,
    /// Health following the models, from [`GrpcServer::serve`] until the drain.
    following: Option<JoinHandle<()>>,
}

impl GrpcServer {
    /// Serves on `listener` at once, its connections run by `connection` and admitted by
    /// `security`; health says NOT_SERVING, and the API UNAVAILABLE, until
    /// [`GrpcServer::serving`].
    pub async fn start(
        listener: TcpListener,
        limits: CallLimits,
        connection: Connection,
        security: Security,
    ) -> anyhow::Result<Self> {
        let (health, health_service) = tonic_health::server::health_reporter();
        for name in ["", SERVICE_NAME] {
            health
                .set_service_status(&name, ServingStatus::NotServing)
                .await;
        }
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let (reflection_v1, reflection_v1alpha) = match security.reflection {
            true => (
                Some(reflection().build_v1()?),
                Some(reflection().build_v1alpha()?),
            ),
            false => (None, None),
        };

        let max_message = limits.max_message_bytes;
        let lifecycle = Arc::new(Lifecycle::new(limits));
        let api = pb::siglip_server::SiglipServer::new(SiglipService::new(Arc::clone(&lifecycle)))
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(usize::MAX);
        let oip = oip::pb::grpc_inference_service_server::GrpcInferenceServiceServer::new(
            oip::InferenceService::new(Arc::clone(&lifecycle)),
        )
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(usize::MAX);

        let incoming = transport::incoming(listener, &connection, security.tls);
        let (stop, stopped) = oneshot::channel::<()>();
        let server = connection
            .builder()
            // A call refused for its token is not traced (anyone may send those, as fast as they
            // like); one refused as malformed is, with its status.
            .layer(Authorize::new(security.tokens, calls::record_refused))
            .layer(traced::Traced)
            .layer(MalformedCalls {
                max_message_bytes: max_message,
            })
            .add_service(health_service)
            .add_optional_service(reflection_v1)
            .add_optional_service(reflection_v1alpha)
            .add_service(api)
            .add_service(oip)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            });
        Ok(Self {
            lifecycle,
            health,
            server: tokio::spawn(server),
            stop,
            following: None,
        })
    }

    /// Calls are served from `models` from now on, each model once it is warm; health follows
    /// them until the drain: each model's name is SERVING while a version of it serves on a
    /// healthy device, the API and the whole server ("") once every model found at startup is
    /// warm and while every device is healthy.
    pub fn serve(&mut self, models: Arc<Repository>) {
        self.lifecycle.set_models(Arc::clone(&models));
        self.following = Some(tokio::spawn(follow(models, self.health.clone())));
    }

    /// Health says NOT_SERVING, new calls are refused, open streams are asked to end, and
    /// calls in flight get up to `grace` to finish. Returns once the server has stopped, or
    /// `grace` has passed.
    pub async fn drain(mut self, grace: Duration) -> anyhow::Result<()> {
        // Following ends first: it must not turn a draining server SERVING.
        let mut names: Vec<String> = vec!["".into(), SERVICE_NAME.into()];
        if let Some(following) = self.following.take() {
            following.abort();
            let _ = following.await;
        }
        if let Ok(models) = self.lifecycle.models() {
            names.extend(models.list().0.into_iter().map(|m| model_service(&m.name)));
            // Removed since following ended: their entries (and Watch streams) end too.
            names.extend(models.health().removed.iter().map(|n| model_service(n)));
        }
        gauge!(metrics::READY).set(0.0);
        for name in names {
            self.health
                .set_service_status(&name, ServingStatus::NotServing)
                .await;
            // Then forget it: that ends its Watch streams (after their NOT_SERVING), which would
            // otherwise hold the drain open for the whole grace period. No new Check can come: the
            // server stops accepting calls just below.
            self.health.clear_service_status(&name).await;
        }
        self.lifecycle.begin_shutdown();
        let _ = self.stop.send(());
        match tokio::time::timeout(grace, self.server).await {
            Ok(result) => result.context("server task")?.context("gRPC server")?,
            Err(_) => {
                tracing::warn!("in-flight work did not finish within {grace:?}; exiting anyway")
            }
        }
        Ok(())
    }
}

/// The health-service name of one model.
fn model_service(model: &str) -> String {
    format!("{SERVICE_NAME}/{model}")
}

/// Keeps the health service in step with the models (see [`GrpcServer::serve`]).
async fn follow(models: Arc<Repository>, mut health: HealthReporter) {
    let mut changes = models.changes();
    let mut all_serving = false;
    // What each model's name says now: a Watch hears of changes only.
    let mut said: std::collections::HashMap<String, bool> = Default::default();
    loop {
        changes.borrow_and_update();
        let now = models.health();
        for name in &now.removed {
            said.remove(name);
            health.clear_service_status(&model_service(name)).await;
        }
        // Models first: whoever sees the whole server SERVING finds its models SERVING too.
        for (name, serving) in &now.models {
            if said.insert(name.clone(), *serving) == Some(*serving) {
                continue;
            }
            let status = match serving {
                true => ServingStatus::Serving,
                false => ServingStatus::NotServing,
            };
            health
                .set_service_status(&model_service(name), status)
                .await;
        }
        if now.all != all_serving {
            all_serving = now.all;
            // The API before the whole server ("") when turning SERVING, after it when turning
            // NOT_SERVING: whoever sees "" SERVING finds the API SERVING too.
            let (status, names) = match now.all {
                true => (ServingStatus::Serving, [SERVICE_NAME, ""]),
                false => (ServingStatus::NotServing, ["", SERVICE_NAME]),
            };
            for name in names {
                health.set_service_status(name, status).await;
            }
            gauge!(metrics::READY).set(if now.all { 1.0 } else { 0.0 });
            tracing::info!(
                "health: {}",
                if now.all { "SERVING" } else { "NOT_SERVING" }
            );
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}
