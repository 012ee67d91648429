//! The gRPC transport: the `siglip.v1.Siglip` service, `grpc.health.v1` and server reflection on
//! one listener. It serves whatever core it is handed ([`Transport::serving`]) and knows nothing
//! of how that core was built (see `server`).
//!
//! - `service`: the RPCs, each observed (`observe`) and converted (`convert`), Upload and Stream
//!   with their protocols in `upload` and `stream` (+ `delivery`), chunked images put back
//!   together in `chunks`;
//! - `waits`: every wait on a client has an end;
//! - `connection`: HTTP/2 and TCP settings; `tls`: TLS and mutual TLS on the accepted
//!   connections; `auth`: bearer tokens and the caller's name, before any handler; `reload`: the
//!   TLS and token files, re-read as they change;
//! - `early`: tonic's own answers, remapped and counted;
//! - `state`: the lifecycle every handler shares; `status`: core errors → status codes.
//!
//! `chunks` and `convert` are public for the fuzz targets (`fuzz/`).

mod auth;
pub mod chunks;
mod connection;
pub mod convert;
mod delivery;
mod early;
mod observe;
mod reload;
mod report;
mod service;
mod state;
mod status;
mod stream;
pub mod stream_config;
mod tls;
mod upload;
mod waits;

use std::{io, pin::Pin, sync::Arc, time::Duration};

use anyhow::Context;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tokio_stream::{Stream, StreamExt};
use tonic_health::{server::HealthReporter, ServingStatus};

use crate::infer::Infer;
pub use auth::Tokens;
pub use connection::Connection;
pub use reload::Reloading;
use state::State;
pub use state::{Limits, RunningOn};
pub use tls::{Handshakes, Tls, TlsFiles};

/// Who may connect and call.
pub struct Security {
    /// TLS on the port (mutual when it has a client CA); plaintext when `None`, for meshes that
    /// terminate TLS themselves.
    pub tls: Option<Tls>,
    /// Bearer tokens every call but health must carry; anyone may call when `None`.
    pub tokens: Option<Arc<Reloading<Tokens>>>,
    /// Server reflection (behind the tokens, when there are tokens).
    pub reflection: bool,
}

impl Security {
    /// The mode, in words, for the startup log line.
    pub fn mode(&self) -> String {
        let transport = self.tls.as_ref().map_or("plaintext", Tls::mode);
        let tokens = match self.tokens {
            Some(_) => "bearer tokens required",
            None => "no tokens",
        };
        let reflection = match self.reflection {
            true => "reflection on",
            false => "reflection off",
        };
        format!("{transport}, {tokens}, {reflection}")
    }
}

/// Generated from `proto/siglip/v1/siglip.proto`.
pub mod pb {
    tonic::include_proto!("siglip.v1");

    /// For server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("siglip_descriptor");
}

/// The health-service names this server reports: overall (`""`) and the API itself.
const SERVICE_NAME: &str = "siglip.v1.Siglip";

/// The gRPC server, running on its own task.
pub struct Transport {
    state: Arc<State>,
    health: HealthReporter,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    stop: oneshot::Sender<()>,
}

impl Transport {
    /// Serves on `listener` at once, its connections run by `connection` and admitted by
    /// `security`; health says NOT_SERVING, and the API UNAVAILABLE, until
    /// [`Transport::serving`].
    pub async fn start(
        listener: TcpListener,
        limits: Limits,
        connection: Connection,
        security: Security,
    ) -> anyhow::Result<Self> {
        let (health, health_service) = tonic_health::server::health_reporter();
        for name in ["", SERVICE_NAME] {
            health
                .set_service_status(name, ServingStatus::NotServing)
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
        let state = Arc::new(State::new(limits));
        let api =
            pb::siglip_server::SiglipServer::new(service::SiglipService::new(Arc::clone(&state)))
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(usize::MAX);

        let accepted = connection.incoming(listener);
        let incoming: Pin<Box<dyn Stream<Item = io::Result<tls::Peer>> + Send>> = match security.tls
        {
            Some(tls) => Box::pin(tls.handshakes(accepted)),
            None => Box::pin(accepted.map(|a| a.map(tls::Peer::Plain))),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let server = connection
            .builder()
            .layer(early::EarlyAnswers {
                max_message_bytes: max_message,
            })
            .layer(auth::Authorize::new(security.tokens))
            .add_service(health_service)
            .add_optional_service(reflection_v1)
            .add_optional_service(reflection_v1alpha)
            .add_service(api)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            });
        Ok(Self {
            state,
            health,
            server: tokio::spawn(server),
            stop,
        })
    }

    /// Requests are served by `infer` from now on; health says SERVING.
    pub async fn serving(&mut self, infer: Arc<Infer>, on: RunningOn) {
        self.state.set_ready(infer, on);
        // The whole server ("") last: whoever sees it SERVING finds the API SERVING too.
        for name in [SERVICE_NAME, ""] {
            self.health
                .set_service_status(name, ServingStatus::Serving)
                .await;
        }
    }

    /// Health follows the device once serving (`health::follow`): NOT_SERVING while inference
    /// keeps failing, SERVING again after a success. Calls are accepted either way.
    pub async fn set_serving(&self, serving: bool) {
        // The API before the whole server ("") when turning SERVING (as in `serving`), after it
        // when turning NOT_SERVING: whoever sees "" SERVING finds the API SERVING too.
        let (status, names) = match serving {
            true => (ServingStatus::Serving, [SERVICE_NAME, ""]),
            false => (ServingStatus::NotServing, ["", SERVICE_NAME]),
        };
        for name in names {
            self.health.set_service_status(name, status).await;
        }
    }

    /// Health says NOT_SERVING, new calls are refused, open streams are asked to end, and
    /// calls in flight get up to `grace` to finish. Returns once the server has stopped, or
    /// `grace` has passed.
    pub async fn drain(mut self, grace: Duration) -> anyhow::Result<()> {
        for name in ["", SERVICE_NAME] {
            self.health
                .set_service_status(name, ServingStatus::NotServing)
                .await;
            // Then forget it: that ends its Watch streams (after their NOT_SERVING), which would
            // otherwise hold the drain open for the whole grace period. No new Check can come: the
            // server stops accepting calls just below.
            self.health.clear_service_status(name).await;
        }
        self.state.begin_shutdown();
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
