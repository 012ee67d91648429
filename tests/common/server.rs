//! A real `siglip-serve serve` process on an ephemeral loopback port, for API tests.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use siglip_serve::grpc::pb::{self, siglip_client::SiglipClient};
use tonic::transport::{Channel, ClientTlsConfig};
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

pub struct Server {
    child: Child,
    pub addr: String,
    pub metrics_addr: String,
    /// How [`Server::channel`] reaches a server that runs TLS.
    tls: Option<ClientTlsConfig>,
}

/// The `--threads` (libtorch intra-op threads) of the test servers: `SIGLIP_TEST_THREADS` when
/// set, else 1. One thread keeps many servers of a parallel test run from fighting over every
/// core; set it (0: one per core) to run the suite as a production server would.
pub fn test_threads() -> String {
    match std::env::var("SIGLIP_TEST_THREADS") {
        Ok(threads) => {
            threads.parse::<usize>().unwrap_or_else(|_| {
                panic!("SIGLIP_TEST_THREADS={threads:?} is not a thread count")
            });
            threads
        }
        Err(_) => "1".to_string(),
    }
}

/// `siglip-serve serve` on `model` with `extra` flags: ephemeral loopback ports, float32 (the
/// tests compare with the runtime in float32 at 1e-5), errors only in the log, and, unless
/// `extra` names them:
/// - `--device cpu`: the tests' expected values and their premises about what is slow (the
///   base-224 model, a large decode against one forward pass) are the CPU's; `auto` would pick a
///   GPU wherever libtorch sees one and change them all at once;
/// - `--threads` from [`test_threads`] (1 unless `SIGLIP_TEST_THREADS` says otherwise).
///
/// `model` is a model directory (`--model-dir`), or a directory of them (`--model-repository`).
pub fn serve_command(model: &Path, extra: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_siglip-serve"));
    command.args([
        "serve",
        "--grpc-addr",
        "127.0.0.1:0",
        "--metrics-addr",
        "127.0.0.1:0",
        "--dtype",
        "float32",
    ]);
    if !extra.contains(&"--device") {
        command.args(["--device", "cpu"]);
    }
    if !extra.contains(&"--threads") {
        command.args(["--threads", &test_threads()]);
    }
    let source = match model.join("manifest.json").exists() {
        true => "--model-dir",
        false => "--model-repository",
    };
    command
        .arg(source)
        .arg(model)
        .args(extra)
        // Expected failures are logged at warn; keep the test output to real errors.
        .env("RUST_LOG", "error");
    command
}

/// The labels of [`well_behaved`]: those of the API tests (`LABELS` in `tests/grpc/main.rs`),
/// so that a test's own calls with them and the latency helpers share the text cache.
pub const WELL_BEHAVED_LABELS: [&str; 4] = [
    "a photo of a cat",
    "an astronaut",
    "a cup of coffee",
    "a rocket",
];

/// The call the latency helpers time: a Classify of a small photo against
/// [`WELL_BEHAVED_LABELS`].
pub fn well_behaved() -> pb::ClassifyRequest {
    pb::ClassifyRequest {
        model: String::new(),
        image: Some(pb::Image {
            source: Some(pb::image::Source::Encoded(super::asset(
                "astronaut_224.jpg",
            ))),
        }),
        texts: WELL_BEHAVED_LABELS.iter().map(|s| s.to_string()).collect(),
        options: None,
    }
}

/// How long one [`well_behaved`] call takes on `client`.
pub async fn time_well_behaved(client: &mut SiglipClient<Channel>) -> Duration {
    let request = well_behaved();
    let started = Instant::now();
    client
        .classify(request)
        .await
        .expect("a well-behaved caller is served");
    started.elapsed()
}

/// Samples a gauge every few milliseconds, in a task of its own, until stopped: the most it saw.
pub struct Sampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<f64>,
}

impl Sampler {
    /// Starts sampling `name` (as [`metric_at`] names it) on the `/metrics` endpoint at `addr`.
    pub fn start(addr: &str, name: &str) -> Sampler {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task = tokio::spawn({
            let (addr, name, stop) = (addr.to_string(), name.to_string(), stop.clone());
            async move {
                let mut most = f64::MIN;
                loop {
                    most = most.max(metric_at(&addr, &name).await);
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        return most;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        });
        Sampler { stop, task }
    }

    /// Stops sampling; the most the gauge was seen at.
    pub async fn most(self) -> f64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.expect("sampler")
    }
}

impl Server {
    /// Starts the server with the tiny test model and `extra` flags; returns once it listens
    /// (the model may still be loading).
    pub fn spawn(extra: &[&str]) -> Server {
        Server::spawn_model(&super::generated("SIGLIP_TEST_MODEL_DIR"), extra, &[])
    }

    /// [`Server::spawn`] with another model directory and environment variables set (flags can
    /// come from either).
    pub fn spawn_model(model: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        Server::spawn_logging(model, extra, env, Stdio::inherit())
    }

    /// [`Server::spawn_model`] with its log (stderr) sent to `log`.
    pub fn spawn_logging(
        model: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
        log: impl Into<Stdio>,
    ) -> Server {
        let mut child = serve_command(model, extra)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start siglip-serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        // The metrics line comes first.
        let (mut addr, mut metrics_addr) = (None, None);
        while addr.is_none() {
            let line = lines
                .next()
                .expect("siglip-serve exited before listening")
                .expect("read stdout");
            if let Some(a) = line.strip_prefix("siglip-serve: metrics listening on ") {
                metrics_addr = Some(a.to_string());
            }
            if let Some(a) = line.strip_prefix("siglip-serve: gRPC listening on ") {
                addr = Some(a.to_string());
            }
        }
        Server {
            child,
            addr: addr.unwrap(),
            metrics_addr: metrics_addr.expect("the metrics address is printed first"),
            tls: None,
        }
    }

    /// From now on, [`Server::channel`] (and with it every client and health check here)
    /// connects over TLS with `tls`.
    pub fn with_tls(mut self, tls: ClientTlsConfig) -> Server {
        self.tls = Some(tls);
        self
    }

    /// Starts the server and waits until its health service says SERVING.
    pub async fn ready(extra: &[&str]) -> Server {
        Server::ready_model(&super::generated("SIGLIP_TEST_MODEL_DIR"), extra, &[]).await
    }

    /// [`Server::spawn_model`], then waits until its health service says SERVING.
    pub async fn ready_model(model: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let server = Server::spawn_model(model, extra, env);
        server.wait_for(ServingStatus::Serving).await;
        server
    }

    pub fn url(&self) -> String {
        match self.tls {
            Some(_) => format!("https://{}", self.addr),
            None => format!("http://{}", self.addr),
        }
    }

    pub async fn channel(&self) -> Channel {
        let mut endpoint = Channel::from_shared(self.url()).expect("url");
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.clone()).expect("TLS config");
        }
        endpoint.connect().await.expect("connect")
    }

    /// A channel whose HTTP/2 windows are the protocol's smallest, so the server's sends to a
    /// client that does not read block after a few large answers.
    pub async fn small_window_channel(&self) -> Channel {
        Channel::from_shared(self.url())
            .expect("url")
            .initial_stream_window_size(65_535)
            .initial_connection_window_size(65_535)
            .connect()
            .await
            .expect("connect")
    }

    pub async fn client(&self) -> SiglipClient<Channel> {
        SiglipClient::new(self.channel().await)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }

    pub async fn health(&self, service: &str) -> ServingStatus {
        let mut health = HealthClient::new(self.channel().await);
        let response = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health check");
        response.into_inner().status()
    }

    /// The value of an unlabelled gauge or counter on `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        metric_at(&self.metrics_addr, name).await
    }

    /// A well-behaved caller's latency on this server now, with nothing else going on: one
    /// [`well_behaved`] call first (it caches the labels and takes the first-call costs), then
    /// the slowest of `calls` more on the same connection. Measured in the test's own run, it
    /// scales a bound with this machine, its load and the model under test.
    pub async fn idle_latency(&self, calls: usize) -> Duration {
        let mut client = self.client().await;
        time_well_behaved(&mut client).await;
        super::slowest_of(calls, async || {
            time_well_behaved(&mut client).await;
        })
        .await
    }

    /// One [`well_behaved`] call on a connection of its own (as a caller beside whatever else
    /// connects); how long the call took, the connection not counted.
    pub async fn served(&self) -> Duration {
        time_well_behaved(&mut self.client().await).await
    }

    /// A round trip with no inference behind it: after one GetModelInfo to warm up, the slowest
    /// of `calls` more.
    pub async fn round_trip(&self, calls: usize) -> Duration {
        let mut client = self.client().await;
        let mut info = async || {
            client
                .get_model_info(pb::GetModelInfoRequest::default())
                .await
                .expect("model info");
        };
        info().await;
        super::slowest_of(calls, info).await
    }

    /// The server's resident memory, in bytes.
    pub fn rss(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("status");
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS");
        kb * 1024
    }

    pub async fn wait_for(&self, status: ServingStatus) {
        let until = Instant::now() + Duration::from_secs(120);
        while self.health("").await != status {
            assert!(Instant::now() < until, "server never became {status:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the process to exit and fails the test unless it exits 0 within `limit`.
    /// Async, so that the test's own connections can close meanwhile (a draining server waits
    /// for them).
    pub async fn exits_cleanly(mut self, limit: Duration) {
        let until = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                assert!(status.success(), "siglip-serve exited with {status}");
                return;
            }
            assert!(
                Instant::now() < until,
                "siglip-serve still running {limit:?} after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `/metrics` page at `addr`.
pub async fn metrics_text(addr: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to /metrics");
    conn.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
        .await
        .expect("send");
    let mut text = String::new();
    conn.read_to_string(&mut text).await.expect("read /metrics");
    text
}

/// The value of a gauge or counter on the `/metrics` endpoint at `addr` (a task that outlives a
/// borrow of the [`Server`] samples it this way), summed over the series that carry the labels
/// asked for and any others: `siglip_images_processed_total` is the server's total over its
/// models, `siglip_images_processed_total{model="tiny"}` one model's, and
/// `siglip_auth_refused_total{reason="missing"}` one reason's. Panics when no series matches.
pub async fn metric_at(addr: &str, query: &str) -> f64 {
    let text = metrics_text(addr).await;
    let (name, wanted) = series(query);
    let values: Vec<f64> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            let (n, labels) = series(key);
            (n == name && wanted.iter().all(|w| labels.contains(w)))
                .then(|| value.parse::<f64>().expect(l))
        })
        .collect();
    assert!(!values.is_empty(), "{query} not on /metrics");
    values.iter().sum()
}

/// A series as `/metrics` writes it: its name and its `label="value"` pairs.
fn series(key: &str) -> (&str, Vec<&str>) {
    match key.split_once('{') {
        Some((name, labels)) => (
            name,
            labels
                .trim_end_matches('}')
                .split(',')
                .filter(|l| !l.is_empty())
                .collect(),
        ),
        None => (key, Vec::new()),
    }
}

/// 256 labels of 2 KB each: answers large enough to fill a small flow-control window quickly.
pub fn long_labels() -> Vec<String> {
    (0..256)
        .map(|i| format!("{i} {}", "x".repeat(2000)))
        .collect()
}
