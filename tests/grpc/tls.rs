//! TLS and mutual TLS with real handshakes: certificates made here (`common::pki`), the tonic
//! client and a bare rustls client (which shows the server's certificate), refusals, rotation
//! of the files under a running server, and `siglip-serve health` over TLS.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use tokio_rustls::rustls::{
    self,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName},
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use super::*;
use crate::common::{
    asset,
    pki::{Ca, Leaf},
    server::{metrics_text, Server},
    Scratch,
};

/// The tonic client's TLS: trusts `ca`, presents `identity` if any.
pub(crate) fn client_tls(ca: &Ca, identity: Option<&Leaf>) -> ClientTlsConfig {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.pem()))
        .domain_name("localhost");
    match identity {
        Some(leaf) => tls.identity(Identity::from_pem(&leaf.cert, &leaf.key)),
        None => tls,
    }
}

/// One Classify call over a new TLS connection with `tls`: the status, or the connection error.
async fn classify_over(server: &Server, tls: ClientTlsConfig) -> Result<(), String> {
    let channel = Channel::from_shared(format!("https://{}", server.addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    SiglipClient::new(channel)
        .classify(classify_request(asset("rocket.bmp"), labels()))
        .await
        .map(|_| ())
        .map_err(|s| format!("{s:?}"))
}

/// A bare rustls handshake (TLS `versions`), trusting `ca`, presenting `identity`: the serial
/// number of the certificate the server presented, or why the handshake failed.
async fn handshake(
    server: &Server,
    ca: &Ca,
    identity: Option<&Leaf>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<Vec<u8>, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.pem().as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(leaf) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(leaf.cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(leaf.key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(&server.addr)
        .await
        .map_err(|e| e.to_string())?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    // TLS 1.3 sends the verdict on the client's certificate after the client thinks the
    // handshake is done: a read shows whether the server refused it.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .map_err(|e| e.to_string())?;
    let mut first = [0u8; 9];
    tls.read_exact(&mut first)
        .await
        .map_err(|e| e.to_string())?;
    let (_, session) = tls.get_ref();
    assert_eq!(session.alpn_protocol(), Some(&b"h2"[..]));
    let der = session.peer_certificates().unwrap()[0].clone();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    Ok(cert.raw_serial().to_vec())
}

const TLS13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
const TLS12: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];

/// A TLS server on files in `scratch`: server certificate `serial` from `ca`, and `ca` as the
/// client CA when `mutual`.
async fn tls_server(
    scratch: &Scratch,
    ca: &Ca,
    serial: u64,
    mutual: bool,
    client: Option<&Leaf>,
) -> Server {
    let leaf = ca.server(serial);
    let cert = scratch.write("tls.crt", &leaf.cert);
    let key = scratch.write("tls.key", &leaf.key);
    let client_ca = scratch.write("ca.crt", &ca.pem());
    let mut flags = vec![
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--watch-seconds",
        "1",
    ];
    if mutual {
        flags.extend(["--tls-client-ca", &client_ca]);
    }
    let server = Server::spawn(&flags).with_tls(client_tls(ca, client));
    server
        .wait_for(tonic_health::pb::health_check_response::ServingStatus::Serving)
        .await;
    server
}

#[tokio::test]
async fn tls_serves_clients_that_trust_it_and_refuses_plaintext_and_strangers() {
    let scratch = Scratch::new("tls");
    let (ca, stranger) = (Ca::new("test CA"), Ca::new("another CA"));
    let server = tls_server(&scratch, &ca, 1, false, None).await;

    classify_over(&server, client_tls(&ca, None))
        .await
        .expect("a client that trusts the CA is served");
    // TLS 1.2 and 1.3 both, with ALPN h2 (grpc-go and grpcio insist on it).
    assert_eq!(handshake(&server, &ca, None, TLS13).await.unwrap(), vec![1]);
    assert_eq!(handshake(&server, &ca, None, TLS12).await.unwrap(), vec![1]);

    let untrusted = classify_over(&server, client_tls(&stranger, None)).await;
    assert!(untrusted.is_err(), "a client trusting another CA connected");
    let plaintext = SiglipClient::new(
        Channel::from_shared(format!("http://{}", server.addr))
            .unwrap()
            .connect()
            .await
            .expect("TCP connects"),
    )
    .classify(classify_request(asset("rocket.bmp"), labels()))
    .await;
    assert!(plaintext.is_err(), "a plaintext call was answered");
    let refused = server
        .metric("siglip_tls_handshake_failures_total{reason=\"refused\"}")
        .await;
    assert!(refused >= 1.0, "refused handshakes counted: {refused}");
    // The server serves on.
    classify_over(&server, client_tls(&ca, None)).await.unwrap();
}

#[tokio::test]
async fn mutual_tls_refuses_no_certificate_another_cas_and_an_expired_one() {
    let scratch = Scratch::new("mtls");
    let (ca, stranger) = (Ca::new("test CA"), Ca::new("another CA"));
    let good = ca.client("camera-7");
    let server = tls_server(&scratch, &ca, 1, true, Some(&good)).await;

    classify_over(&server, client_tls(&ca, Some(&good)))
        .await
        .expect("a client with a certificate from the CA is served");
    // The same client completes a bare handshake in both versions: the refusals below are the
    // certificates', not the versions'.
    for versions in [TLS13, TLS12] {
        handshake(&server, &ca, Some(&good), versions)
            .await
            .expect("the good certificate");
    }
    for (case, identity) in [
        ("no certificate", None),
        (
            "another CA's certificate",
            Some(stranger.client("camera-7")),
        ),
        (
            "an expired certificate",
            Some(ca.expired_client("camera-7")),
        ),
    ] {
        let result = classify_over(&server, client_tls(&ca, identity.as_ref())).await;
        assert!(result.is_err(), "{case}: served");
        for versions in [TLS13, TLS12] {
            let result = handshake(&server, &ca, identity.as_ref(), versions).await;
            assert!(result.is_err(), "{case}: handshake completed");
        }
    }
    // The certificate's subject names the caller (no tokens here).
    let page = metrics_text(&server.metrics_addr).await;
    assert!(
        page.contains("siglip_calls_by_caller_total{caller=\"camera-7\"}"),
        "{page}"
    );
    classify_over(&server, client_tls(&ca, Some(&good)))
        .await
        .unwrap();
}

/// The files as the kubelet lays out a Secret: `tls.crt` → `..data/tls.crt`, and `..data` a
/// symlink to a timestamped folder that an update replaces in one rename.
struct SecretVolume {
    dir: PathBuf,
    version: usize,
}

impl SecretVolume {
    fn new(dir: &Path) -> Self {
        for name in ["tls.crt", "tls.key", "ca.crt"] {
            std::os::unix::fs::symlink(format!("..data/{name}"), dir.join(name)).unwrap();
        }
        Self {
            dir: dir.to_path_buf(),
            version: 0,
        }
    }

    fn update(&mut self, files: &[(&str, &str)]) {
        self.version += 1;
        let folder = format!("..{}", self.version);
        std::fs::create_dir(self.dir.join(&folder)).unwrap();
        for (name, text) in files {
            std::fs::write(self.dir.join(&folder).join(name), text).unwrap();
        }
        let link = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&folder, &link).unwrap();
        std::fs::rename(&link, self.dir.join("..data")).unwrap();
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_str().unwrap().to_string()
    }
}

/// Polls handshakes until the server presents `serial`.
async fn until_serial(server: &Server, ca: &Ca, identity: &Leaf, serial: u8) -> Duration {
    let started = Instant::now();
    loop {
        if let Ok(seen) = handshake(server, ca, Some(identity), TLS13).await {
            if seen == vec![serial] {
                return started.elapsed();
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "serial {serial} never presented"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn certificates_rotate_without_a_restart_and_open_streams_carry_on() {
    let scratch = Scratch::new("rotate");
    let mut volume = SecretVolume::new(&scratch.0);
    let (old_ca, new_ca) = (Ca::new("CA 2026"), Ca::new("CA 2027"));
    let (old_client, new_client) = (old_ca.client("camera-7"), new_ca.client("camera-7"));
    let first = old_ca.server(1);
    volume.update(&[
        ("tls.crt", &first.cert),
        ("tls.key", &first.key),
        ("ca.crt", &old_ca.pem()),
    ]);
    let (cert, key, ca) = (
        volume.path("tls.crt"),
        volume.path("tls.key"),
        volume.path("ca.crt"),
    );
    let server = Server::spawn(&[
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--tls-client-ca",
        &ca,
        "--watch-seconds",
        "1",
    ])
    .with_tls(client_tls(&old_ca, Some(&old_client)));
    server
        .wait_for(tonic_health::pb::health_check_response::ServingStatus::Serving)
        .await;
    assert_eq!(
        handshake(&server, &old_ca, Some(&old_client), TLS13)
            .await
            .unwrap(),
        vec![1]
    );

    // A Stream opened before the rotation, on a connection made with the old material.
    let mut client = server.client().await;
    let (input, mut output) = open_stream(&mut client, asset("rocket.bmp")).await;

    // cert-manager renews under a new CA: certificate, key and client CA change together.
    let second = new_ca.server(2);
    volume.update(&[
        ("tls.crt", &second.cert),
        ("tls.key", &second.key),
        ("ca.crt", &new_ca.pem()),
    ]);
    let took = until_serial(&server, &new_ca, &new_client, 2).await;
    eprintln!("rotation: the new certificate was presented {took:?} after the swap");
    classify_over(&server, client_tls(&new_ca, Some(&new_client)))
        .await
        .expect("new material, new connection");
    assert!(
        classify_over(&server, client_tls(&old_ca, Some(&old_client)))
            .await
            .is_err(),
        "a client certificate from the replaced CA is still accepted on a new connection"
    );

    // The stream opened before goes on.
    input.send(frame(2, asset("rocket.bmp"))).await.unwrap();
    let result = output
        .next()
        .await
        .expect("a result")
        .expect("the old stream is served");
    assert_eq!(result.frame_id, 2);

    // A broken update (a key cut short) is refused: the last good material stays in use.
    volume.update(&[
        ("tls.crt", &new_ca.server(3).cert),
        ("tls.key", &second.key[..second.key.len() / 2]),
        ("ca.crt", &new_ca.pem()),
    ]);
    // Checked once the broken TLS files have been read and refused (the watcher's tick, then the
    // parse): before that, the checks below would pass without testing anything.
    crate::common::wait_until("the broken TLS files rejected", async || {
        server
            .metric("siglip_reloads_total{what=\"tls\",outcome=\"rejected\"}")
            .await
            == 1.0
    })
    .await;
    assert_eq!(
        handshake(&server, &new_ca, Some(&new_client), TLS13)
            .await
            .unwrap(),
        vec![2]
    );
    input.send(frame(3, asset("rocket.bmp"))).await.unwrap();
    assert_eq!(output.next().await.unwrap().unwrap().frame_id, 3);
}

/// `siglip-serve health` over mutual TLS, from flags and from the environment (as a container's
/// HEALTHCHECK runs it).
#[tokio::test]
async fn the_health_command_works_over_mutual_tls() {
    let scratch = Scratch::new("health-tls");
    let ca = Ca::new("test CA");
    let probe = ca.client("probe");
    let server = tls_server(&scratch, &ca, 1, true, Some(&probe)).await;
    let (ca_file, cert, key) = (
        scratch.write("probe-ca.crt", &ca.pem()),
        scratch.write("probe.crt", &probe.cert),
        scratch.write("probe.key", &probe.key),
    );
    let addr = format!("https://{}", server.addr);
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_siglip-serve"))
            .arg("health")
            .args(args)
            .envs(env.iter().copied())
            .output()
            .expect("run siglip-serve health");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        )
    };
    let flags = [
        "--addr",
        &addr,
        "--tls-ca",
        &ca_file,
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--tls-server-name",
        "localhost",
    ];
    assert_eq!(run(&flags, &[]), (true, "SERVING".to_string()));
    let env = [
        ("SIGLIP_HEALTH_ADDR", addr.as_str()),
        ("SIGLIP_CLIENT_TLS_CA", &ca_file),
        ("SIGLIP_CLIENT_TLS_CERT", &cert),
        ("SIGLIP_CLIENT_TLS_KEY", &key),
    ];
    assert_eq!(run(&[], &env), (true, "SERVING".to_string()));
    // Without its certificate the probe is refused at the handshake, and says so by failing.
    assert!(!run(&["--addr", &addr, "--tls-ca", &ca_file], &[]).0);
}

/// Clients that connect and say nothing (slowloris at the handshake) and clients that connect
/// and close (TCP health checks): at most `--max-tls-handshakes` handshakes run at once, the
/// silent ones end at the handshake timeout, and a well-behaved client is served meanwhile,
/// waiting at most for the silent connections ahead of it to time out, a cap's worth at a time.
#[tokio::test]
async fn silent_connections_are_capped_and_timed_out_while_a_client_is_served() {
    const CAP: usize = 8;
    const SILENT: usize = 32;
    let scratch = Scratch::new("handshakes");
    let ca = Ca::new("test CA");
    let leaf = ca.server(1);
    let (cert, key) = (
        scratch.write("tls.crt", &leaf.cert),
        scratch.write("tls.key", &leaf.key),
    );
    let server = Server::spawn(&[
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--max-tls-handshakes",
        &CAP.to_string(),
        "--tls-handshake-timeout-seconds",
        "1",
    ])
    .with_tls(client_tls(&ca, None));
    server
        .wait_for(tonic_health::pb::health_check_response::ServingStatus::Serving)
        .await;
    let started = Instant::now();
    classify_over(&server, client_tls(&ca, None)).await.unwrap();
    let idle = started.elapsed();

    for _ in 0..4 {
        drop(tokio::net::TcpStream::connect(&server.addr).await.unwrap());
    }
    let mut silent = Vec::new();
    for _ in 0..SILENT {
        silent.push(tokio::net::TcpStream::connect(&server.addr).await.unwrap());
    }
    let sampler = {
        let addr = server.metrics_addr.clone();
        tokio::spawn(async move {
            let mut most = 0.0_f64;
            let until = Instant::now() + Duration::from_secs(3);
            while Instant::now() < until {
                most = most.max(
                    crate::common::server::metric_at(&addr, "siglip_tls_handshakes_in_progress")
                        .await,
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            most
        })
    };
    let started = Instant::now();
    classify_over(&server, client_tls(&ca, None))
        .await
        .expect("a well-behaved client is served");
    let attacked = started.elapsed();
    let rounds = SILENT.div_ceil(CAP) as u32 + 1;
    let bound = idle * 2 + Duration::from_secs(1) * rounds + Duration::from_secs(1);
    assert!(
        attacked <= bound,
        "served after {attacked:?}, bound {bound:?}"
    );
    let most = sampler.await.unwrap();
    assert!(most <= CAP as f64, "{most} handshakes at once, cap {CAP}");
    assert!(most >= 1.0, "no handshake was seen in progress");

    let timed_out = "siglip_tls_handshake_failures_total{reason=\"timeout\"}";
    let until = Instant::now() + Duration::from_secs(20);
    while server.metric(timed_out).await < SILENT as f64 {
        assert!(
            Instant::now() < until,
            "the silent connections were not all timed out"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        server
            .metric("siglip_tls_handshake_failures_total{reason=\"closed\"}")
            .await,
        4.0
    );
    assert_eq!(
        server.metric("siglip_tls_handshakes_in_progress").await,
        0.0
    );
    drop(silent);
    classify_over(&server, client_tls(&ca, None)).await.unwrap();
}
