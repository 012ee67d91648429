//! The server's life: health and reflection while it serves, SIGTERM while it loads and while it
//! works, the compiled package it unpacks, flags from the environment and the health command.

use std::time::Duration;

use siglip_serve::grpc::pb;
use tokio::{sync::mpsc::Sender, task::JoinHandle};
use tokio_stream::StreamExt;
use tonic::{Code, Status, Streaming};
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
    HealthCheckResponse,
};

use crate::common::{self, asset, server::Server};
use crate::{assert_status, classify_request, labels, model_info, open_stream};

#[tokio::test]
async fn health_says_serving_once_the_model_is_loaded() {
    let server = Server::ready(&[]).await;
    assert_eq!(
        server.health("siglip.v1.Siglip").await,
        ServingStatus::Serving
    );
}

#[tokio::test]
async fn reflection_lists_the_api_and_health() {
    let server = Server::ready(&[]).await;
    // Reflection lists the API (v1; v1alpha is served too).
    let mut reflection =
        tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(
            server.channel().await,
        );
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            ),
        ),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .expect("reflection")
        .into_inner();
    let listed = format!("{:?}", responses.next().await.unwrap().unwrap());
    for name in ["siglip.v1.Siglip", "grpc.health.v1.Health"] {
        assert!(listed.contains(name), "{name} not in {listed}");
    }
}

/// A server sent SIGTERM while it works: a client watches its health, holds a stream open and
/// has four Classify calls in flight.
struct SigtermWhileBusy {
    server: Server,
    watch: Streaming<HealthCheckResponse>,
    in_flight: Vec<JoinHandle<Result<tonic::Response<pb::ClassifyResponse>, Status>>>,
    stream_input: Sender<pb::StreamRequest>,
    stream: Streaming<pb::StreamResponse>,
}

impl SigtermWhileBusy {
    async fn start() -> SigtermWhileBusy {
        // Batches wait for company for half a second: calls stay in flight long enough to be
        // caught by the SIGTERM below.
        let server =
            Server::ready(&["--max-batch-size", "64", "--max-batch-delay-ms", "500"]).await;
        let client = server.client().await;
        let mut health = HealthClient::new(server.channel().await);
        let mut watch = health
            .watch(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("watch")
            .into_inner();
        assert_eq!(
            watch.next().await.unwrap().unwrap().status(),
            ServingStatus::Serving
        );
        let (stream_input, stream) = open_stream(&mut client.clone(), asset("rocket.bmp")).await;
        let in_flight: Vec<_> = (0..4)
            .map(|_| {
                let mut client = client.clone();
                let image = asset("coffee_2000x1500.jpg");
                tokio::spawn(
                    async move { client.classify(classify_request(image, labels())).await },
                )
            })
            .collect();
        // The four calls are being handled (their bodies have arrived, the batcher holds them)
        // before SIGTERM.
        common::wait_until("the four calls arriving", async || {
            server.metric("siglip_inflight_requests").await >= 4.0
        })
        .await;
        server.terminate();
        SigtermWhileBusy {
            server,
            watch,
            in_flight,
            stream_input,
            stream,
        }
    }

    /// Lets go of the stream and the calls; the server must then exit 0.
    async fn exits_cleanly(self) {
        drop(self.stream_input);
        drop(self.stream);
        drop(self.watch);
        for call in self.in_flight {
            let _ = call.await;
        }
        self.server.exits_cleanly(Duration::from_secs(30)).await;
    }
}

#[tokio::test]
async fn at_sigterm_health_turns_not_serving_and_the_watch_ends() {
    let mut busy = SigtermWhileBusy::start().await;
    let status = loop {
        match busy.watch.next().await {
            Some(Ok(update)) if update.status() == ServingStatus::Serving => continue,
            Some(Ok(update)) => break Some(update.status()),
            _ => break None,
        }
    };
    assert_eq!(status, Some(ServingStatus::NotServing));
    // Then the Watch ends, so that it does not hold the drain open.
    assert!(
        busy.watch
            .next()
            .await
            .transpose()
            .expect("watch ends with OK")
            .is_none(),
        "the health Watch went on after NOT_SERVING"
    );
    busy.exits_cleanly().await;
}

#[tokio::test]
async fn at_sigterm_calls_in_flight_are_answered() {
    let mut busy = SigtermWhileBusy::start().await;
    for call in busy.in_flight.drain(..) {
        call.await
            .unwrap()
            .expect("in-flight request completes during shutdown");
    }
    busy.exits_cleanly().await;
}

#[tokio::test]
async fn at_sigterm_open_streams_are_told_to_reconnect() {
    let mut busy = SigtermWhileBusy::start().await;
    let end = busy
        .stream
        .next()
        .await
        .expect("end")
        .expect_err("shutdown status");
    assert_status(
        "stream at shutdown",
        &end,
        Code::Unavailable,
        "shutting down",
    );
    busy.exits_cleanly().await;
}

/// A server whose warm-up would take hours: it stays loading.
async fn loading() -> Server {
    let server = Server::spawn(&["--warmup-rounds", "100000000"]);
    server.wait_for(ServingStatus::NotServing).await;
    server
}

#[tokio::test]
async fn while_the_model_loads_calls_are_refused_as_unavailable() {
    // Health says NOT_SERVING (`loading` waits for it) and calls are refused with UNAVAILABLE.
    let server = loading().await;
    let status = server
        .client()
        .await
        .classify(classify_request(asset("rocket.bmp"), labels()))
        .await
        .expect_err("not ready");
    assert_eq!(status.code(), Code::Unavailable);
}

#[tokio::test]
async fn sigterm_while_the_model_loads_exits_at_once() {
    let server = loading().await;
    server.terminate();
    server.exits_cleanly(Duration::from_secs(10)).await;
}

#[tokio::test]
async fn a_compiled_package_unpacked_at_load_is_removed_at_exit() {
    let model = common::generated("SIGLIP_TEST_AOTI_MODEL_DIR");
    let server = Server::ready_model(&model, &["--max-batch-size", "8"], &[]).await;
    // libtorch's loader unpacks the package into a fresh temporary directory and maps the
    // model's shared library from there.
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", server.pid())).unwrap();
    let unpacked = maps
        .split_whitespace()
        .find_map(|path| path.split_once("/data/aotinductor/").map(|(dir, _)| dir))
        .map(std::path::PathBuf::from)
        .expect("the package's library is mapped from where it was unpacked");
    assert!(unpacked.is_dir(), "{}", unpacked.display());
    server.terminate();
    server.exits_cleanly(Duration::from_secs(30)).await;
    assert!(
        !unpacked.exists(),
        "{} was left behind at exit",
        unpacked.display()
    );
}

#[tokio::test]
async fn flags_come_from_the_environment() {
    let model = common::generated("SIGLIP_TEST_MODEL_DIR");
    let env = [
        ("SIGLIP_MAX_TEXTS", "2"),
        ("SIGLIP_IMAGE_CONVENTION", "pipeline"),
        ("SIGLIP_IMAGE_PROCESSOR", "torchvision"),
    ];
    let server = Server::ready_model(&model, &[], &env).await;
    let mut client = server.client().await;
    let info = model_info(&mut client).await;
    assert_eq!(
        (
            info.image_convention.as_str(),
            info.image_processor.as_str()
        ),
        ("pipeline", "torchvision")
    );
    let three = vec!["a".to_string(), "b".to_string(), "c".to_string()];
    let status = client
        .classify(classify_request(asset("rocket.bmp"), three))
        .await
        .expect_err("over SIGLIP_MAX_TEXTS");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("limit of 2"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn the_health_command_succeeds_while_the_server_serves_and_fails_once_it_is_gone() {
    let server = Server::ready(&[]).await;
    let health = |addr: String| {
        std::process::Command::new(env!("CARGO_BIN_EXE_siglip-serve"))
            .args(["health", "--addr", &addr])
            .output()
            .expect("run siglip-serve health")
    };
    let url = server.url();
    let up = health(url.clone());
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    server.terminate();
    server.exits_cleanly(Duration::from_secs(30)).await;
    // The server is gone: the command fails (the container's HEALTHCHECK relies on it).
    assert!(!health(url).status.success());
}
