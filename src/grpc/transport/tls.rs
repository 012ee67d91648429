//! TLS on the gRPC port (rustls: TLS 1.2 and 1.3, ALPN h2), optionally mutual: with
//! `--tls-client-ca`, a handshake without a client certificate signed by that CA is refused.
//!
//! tonic's own TLS takes its material once, at start; here every handshake takes the material
//! in use at that moment ([`Reloading`]), so a renewed certificate, key or CA reaches new
//! connections within `--watch-seconds` while connections already open keep theirs.
//! Handshakes run on tasks of their own, each bounded by `--tls-handshake-timeout-seconds`, so a
//! client that connects and says nothing holds up no one else's connection; at most
//! `--max-tls-handshakes` run at once, and further connections wait in the kernel's backlog.

use std::{
    io,
    net::SocketAddr,
    path::PathBuf,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use anyhow::Context as _;
use metrics::{counter, gauge};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::Semaphore,
};
use tokio_rustls::{
    rustls::{
        self,
        pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
        server::WebPkiClientVerifier,
        RootCertStore, ServerConfig,
    },
    server::TlsStream,
    TlsAcceptor,
};
use tokio_stream::{wrappers::ReceiverStream, Stream, StreamExt};
use tonic::transport::server::Connected;

use super::{connection::Aged, reload::Reloading};
use crate::metrics as names;

/// Where the TLS material lives.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM certificate chain, the server's own certificate first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA certificates that sign the clients' certificates: mutual TLS when set.
    pub client_ca: Option<PathBuf>,
}

/// How handshakes are bounded.
#[derive(Debug, Clone, Copy)]
pub struct Handshakes {
    /// Longest a handshake may take.
    pub timeout: Duration,
    /// Handshakes in progress at once.
    pub max_in_progress: usize,
}

/// The gRPC port's TLS: the material in use, reloaded as its files change, and how handshakes
/// are bounded.
#[derive(Clone)]
pub struct Tls {
    config: Arc<Reloading<ServerConfig>>,
    handshakes: Handshakes,
    mutual: bool,
}

impl Tls {
    /// Loads the material (an error stops the start) and re-reads it every `poll`.
    pub fn load(files: &TlsFiles, poll: Duration, handshakes: Handshakes) -> anyhow::Result<Self> {
        let mut paths = vec![files.cert.clone(), files.key.clone()];
        paths.extend(files.client_ca.clone());
        let config = Reloading::start(
            "tls",
            "TLS certificate, key and client CA",
            paths,
            poll,
            |c| server_config(&c[0], &c[1], c.get(2).map(Vec::as_slice)),
        )?;
        Ok(Self {
            config,
            handshakes,
            mutual: files.client_ca.is_some(),
        })
    }

    /// For the startup log line.
    pub fn mode(&self) -> &'static str {
        match self.mutual {
            true => "mutual TLS (client certificates required)",
            false => "TLS",
        }
    }

    /// The connections of `accepted` once their handshake has completed; those that fail it or
    /// take too long are dropped here (counted, logged at debug).
    pub(super) fn handshakes<S>(self, accepted: S) -> impl Stream<Item = io::Result<Peer>> + use<S>
    where
        S: Stream<Item = io::Result<Aged>> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let in_progress = Arc::new(Semaphore::new(self.handshakes.max_in_progress.max(1)));
        tokio::spawn(async move {
            let mut accepted = std::pin::pin!(accepted);
            loop {
                // A slot before the next connection is taken from the listener: past the limit,
                // connections wait in the kernel's backlog, costing the server nothing.
                let Ok(slot) = Arc::clone(&in_progress).acquire_owned().await else {
                    return;
                };
                let next = tokio::select! {
                    // The server stopped taking connections (shutdown): stop accepting them.
                    _ = tx.closed() => return,
                    next = accepted.next() => next,
                };
                let stream = match next {
                    Some(Ok(stream)) => stream,
                    Some(Err(e)) => {
                        let _ = tx.send(Err(e)).await;
                        continue;
                    }
                    None => return,
                };
                let (tx, acceptor) = (tx.clone(), TlsAcceptor::from(self.config.current()));
                let timeout = self.handshakes.timeout;
                tokio::spawn(async move {
                    gauge!(names::TLS_HANDSHAKES).increment(1.0);
                    let remote = stream.remote();
                    let outcome = tokio::time::timeout(timeout, acceptor.accept(stream)).await;
                    gauge!(names::TLS_HANDSHAKES).decrement(1.0);
                    drop(slot);
                    let reason = match outcome {
                        Ok(Ok(tls)) => {
                            let _ = tx.send(Ok(Peer::Tls(Box::new(tls)))).await;
                            return;
                        }
                        // Load balancers' TCP checks and port scans: connect, then close.
                        Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                            tracing::debug!(?remote, "connection closed before its TLS handshake");
                            "closed"
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(?remote, error = %e, "TLS handshake refused");
                            "refused"
                        }
                        Err(_) => {
                            tracing::debug!(?remote, ?timeout, "TLS handshake timed out");
                            "timeout"
                        }
                    };
                    counter!(names::TLS_HANDSHAKE_FAILURES, "reason" => reason).increment(1);
                });
            }
        });
        ReceiverStream::new(rx)
    }
}

/// A rustls server configuration from the PEM contents of the files. Errors name the flag and
/// the problem, never the content.
fn server_config(
    cert: &[u8],
    key: &[u8],
    client_ca: Option<&[u8]>,
) -> anyhow::Result<ServerConfig> {
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("--tls-cert: {}", pem_problem(&e)))?;
    anyhow::ensure!(
        !chain.is_empty(),
        "--tls-cert: no PEM certificate in the file"
    );
    let key = PrivateKeyDer::from_pem_slice(key)
        .map_err(|e| anyhow::anyhow!("--tls-key: {}", pem_problem(&e)))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(pem) => {
            let mut roots = RootCertStore::empty();
            for ca in CertificateDer::pem_slice_iter(pem) {
                let ca = ca.map_err(|e| anyhow::anyhow!("--tls-client-ca: {}", pem_problem(&e)))?;
                roots
                    .add(ca)
                    .context("--tls-client-ca: a certificate that is not a usable CA")?;
            }
            anyhow::ensure!(
                !roots.is_empty(),
                "--tls-client-ca: no PEM certificate in the file"
            );
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .context("--tls-client-ca")?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .context("--tls-cert and --tls-key are not a usable pair")?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// What is wrong with a PEM file, in words that quote none of it.
fn pem_problem(e: &rustls::pki_types::pem::Error) -> &'static str {
    use rustls::pki_types::pem::Error;
    match e {
        Error::NoItemsFound => "no PEM item of the expected kind in the file",
        Error::MissingSectionEnd { .. } => "a PEM section without its END line",
        Error::IllegalSectionStart { .. } => "a malformed PEM BEGIN line",
        Error::Base64Decode(_) => "a PEM section that is not valid base64",
        _ => "not a readable PEM file",
    }
}

/// A connection the server accepted: plaintext, or TLS once its handshake completed.
pub(in crate::grpc) enum Peer {
    Plain(Aged),
    Tls(Box<TlsStream<Aged>>),
}

/// Who is at the other end of a connection, for every call on it (tonic puts it in each
/// request's extensions).
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub remote: Option<SocketAddr>,
    /// The client certificate's subject, under mutual TLS.
    pub client: Option<Arc<ClientCertificate>>,
}

/// The identity a verified client certificate gives.
#[derive(Debug)]
pub struct ClientCertificate {
    /// The subject as RFC 4514 text, e.g. `CN=camera-7, O=Example`.
    pub subject: String,
    pub common_name: Option<String>,
}

impl ClientCertificate {
    fn of(der: &CertificateDer<'_>) -> Option<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let subject = cert.subject();
        let common_name = subject
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned);
        Some(Self {
            subject: subject.to_string(),
            common_name,
        })
    }
}

impl Connected for Peer {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        match self {
            Peer::Plain(stream) => PeerInfo {
                remote: stream.remote(),
                client: None,
            },
            Peer::Tls(tls) => {
                let (stream, session) = tls.get_ref();
                PeerInfo {
                    remote: stream.remote(),
                    client: session
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .and_then(ClientCertificate::of)
                        .map(Arc::new),
                }
            }
        }
    }
}

impl AsyncRead for Peer {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Peer::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Peer::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Peer {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Peer::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Peer::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Peer::Plain(s) => Pin::new(s).poll_flush(cx),
            Peer::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Peer::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Peer::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Peer::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Peer::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Peer::Plain(s) => s.is_write_vectored(),
            Peer::Tls(s) => s.is_write_vectored(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate and its key, PEM.
    fn pair(name: &str) -> (String, String) {
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        (cert.pem(), signing_key.serialize_pem())
    }

    #[test]
    fn a_pair_loads_and_a_mismatched_or_broken_one_is_refused_without_quoting_it() {
        let (cert, key) = pair("a.example");
        let (_, other_key) = pair("b.example");
        assert!(server_config(cert.as_bytes(), key.as_bytes(), None).is_ok());
        assert!(server_config(cert.as_bytes(), key.as_bytes(), Some(cert.as_bytes())).is_ok());
        let cases = [
            (cert.clone(), other_key.clone(), None, "not a usable pair"),
            (
                String::new(),
                key.clone(),
                None,
                "--tls-cert: no PEM certificate",
            ),
            (cert.clone(), String::new(), None, "--tls-key"),
            (
                key.clone(),
                key.clone(),
                None,
                "--tls-cert: no PEM certificate",
            ),
            (
                cert.clone(),
                key.clone(),
                Some(String::new()),
                "--tls-client-ca: no PEM",
            ),
            // A key cut short: its END line missing.
            (
                cert.clone(),
                key[..key.len() / 2].to_string(),
                None,
                "--tls-key",
            ),
        ];
        for (cert, key, ca, want) in cases {
            let e = server_config(
                cert.as_bytes(),
                key.as_bytes(),
                ca.as_ref().map(|c| c.as_bytes()),
            )
            .expect_err(want);
            let message = format!("{e:#}");
            assert!(message.contains(want), "{message:?} lacks {want:?}");
            for secret in [&key, &other_key] {
                let body: Vec<&str> = secret.lines().filter(|l| !l.starts_with("-----")).collect();
                assert!(
                    body.iter().all(|line| !message.contains(line)),
                    "{message:?} quotes key material"
                );
            }
        }
    }
}
