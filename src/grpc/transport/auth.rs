//! Who may call: bearer tokens from `--auth-tokens-file`, checked before any handler runs, and
//! the caller's name for logs and `siglip_calls_by_caller_total`.
//!
//! The token file holds one token per line, `<token> [name]`; `#` starts a comment. Clients send
//! `authorization: Bearer <token>`. A missing or unknown token gets UNAUTHENTICATED with a
//! message that never repeats what was sent. Health's Check stays open: probes carry no token.
//! Tokens are compared as SHA-256 digests in constant time, against every token, so neither the
//! time taken nor the digest compared says how much of a guess was right.
//!
//! The caller's name is the token's name; without tokens, the client certificate's common name
//! under mutual TLS; else "anonymous". It is a metric label only up to [`MAX_CALLERS`] names.

use std::{
    collections::HashSet,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use metrics::counter;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::Status;
use tower::{Layer, Service};

use super::{reload::Reloading, tls::PeerInfo};
use crate::metrics as names;

/// Shortest token accepted: a short token can be guessed.
const MIN_TOKEN_LEN: usize = 16;

/// Caller names kept apart in the metric; more share the label "other".
pub const MAX_CALLERS: usize = 64;

/// The tokens of the token file, as digests, with their names.
pub struct Tokens {
    tokens: Vec<([u8; 32], Arc<str>)>,
}

impl Tokens {
    /// Loads `--auth-tokens-file` (an error stops the start) and re-reads it every `poll`.
    pub fn load(path: std::path::PathBuf, poll: Duration) -> anyhow::Result<Arc<Reloading<Self>>> {
        Reloading::start(
            "tokens",
            "token file (--auth-tokens-file)",
            vec![path],
            poll,
            |c| {
                Tokens::parse(
                    std::str::from_utf8(&c[0])
                        .map_err(|_| anyhow::anyhow!("--auth-tokens-file is not UTF-8 text"))?,
                )
            },
        )
    }

    /// Parses the file's text. Errors give the line number and never the line.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut tokens = Vec::new();
        for (n, line) in text.lines().enumerate() {
            // `#` starts a comment at the start of a line or after a space; inside a token it is
            // part of the token.
            let line = match line.trim_start().strip_prefix('#') {
                Some(_) => "",
                None => line.split(" #").next().unwrap_or_default().trim(),
            };
            let mut words = line.split_whitespace();
            let Some(token) = words.next() else { continue };
            let name = words.next().unwrap_or("unnamed");
            anyhow::ensure!(
                words.next().is_none(),
                "--auth-tokens-file line {}: more than `<token> [name]`",
                n + 1
            );
            anyhow::ensure!(
                token.len() >= MIN_TOKEN_LEN,
                "--auth-tokens-file line {}: a token shorter than {MIN_TOKEN_LEN} characters \
                 (e.g. `openssl rand -hex 32` makes a good one)",
                n + 1
            );
            anyhow::ensure!(
                http::HeaderValue::from_str(&format!("Bearer {token}")).is_ok(),
                "--auth-tokens-file line {}: a token no client could send in a header",
                n + 1
            );
            tokens.push((Sha256::digest(token.as_bytes()).into(), Arc::from(name)));
        }
        anyhow::ensure!(
            !tokens.is_empty(),
            "--auth-tokens-file has no token: every call would be refused"
        );
        Ok(Self { tokens })
    }

    /// The name of `token`, if it is one of these.
    pub fn name_of(&self, token: &[u8]) -> Option<Arc<str>> {
        let digest: [u8; 32] = Sha256::digest(token).into();
        let mut found = None;
        for (known, name) in &self.tokens {
            if bool::from(known.ct_eq(&digest)) {
                found = Some(Arc::clone(name));
            }
        }
        found
    }
}

/// What becomes of a call refused here, besides its answer: the server counts it as its API
/// counts calls (the transport does not know the API's methods).
pub(in crate::grpc) type Refused = fn(path: &str, status: &Status);

/// The tower layer that checks every call (see the module's docs).
#[derive(Clone)]
pub(in crate::grpc) struct Authorize {
    tokens: Option<Arc<Reloading<Tokens>>>,
    callers: Arc<Callers>,
    refused: Refused,
}

impl Authorize {
    pub(in crate::grpc) fn new(tokens: Option<Arc<Reloading<Tokens>>>, refused: Refused) -> Self {
        Self {
            tokens,
            callers: Arc::default(),
            refused,
        }
    }
}

impl<S> Layer<S> for Authorize {
    type Service = Authorized<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authorized {
            inner,
            check: self.clone(),
        }
    }
}

#[derive(Clone)]
pub(in crate::grpc) struct Authorized<S> {
    inner: S,
    check: Authorize,
}

impl<S, B> Service<http::Request<B>> for Authorized<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        // Check only: probes use it; Watch holds a stream open, and clients that watch health
        // send their token with it like with any other call.
        if path == "/grpc.health.v1.Health/Check" {
            return Box::pin(self.inner.call(request));
        }
        let peer = request.extensions().get::<PeerInfo>();
        let subject = peer
            .and_then(|p| p.client.as_ref())
            .map(|c| c.subject.as_str());
        let caller = match &self.check.tokens {
            Some(tokens) => match bearer(&request) {
                None => return refuse(path, "missing", peer, self.check.refused),
                Some(token) => match tokens.current().name_of(token) {
                    Some(name) => name,
                    None => return refuse(path, "invalid", peer, self.check.refused),
                },
            },
            None => peer
                .and_then(|p| p.client.as_ref())
                .and_then(|c| c.common_name.as_deref())
                .map_or_else(|| Arc::from("anonymous"), Arc::from),
        };
        tracing::debug!(%caller, subject, path, remote = ?peer.and_then(|p| p.remote), "call");
        let label = self.check.callers.label(&caller);
        counter!(names::CALLS_BY_CALLER, "caller" => label).increment(1);
        Box::pin(self.inner.call(request))
    }
}

/// The token of an `authorization: Bearer <token>` header (the scheme in any case).
fn bearer<B>(request: &http::Request<B>) -> Option<&[u8]> {
    let value = request
        .headers()
        .get(http::header::AUTHORIZATION)?
        .as_bytes();
    let (scheme, token) = value.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| token.trim_ascii())
        .filter(|t| !t.is_empty())
}

/// An UNAUTHENTICATED answer, counted as a refusal and handed to `refused`.
fn refuse<E: Send + 'static>(
    path: &str,
    reason: &'static str,
    peer: Option<&PeerInfo>,
    refused: Refused,
) -> Pin<Box<dyn Future<Output = Result<http::Response<tonic::body::Body>, E>> + Send>> {
    let status = Status::unauthenticated(match reason {
        "missing" => "this server needs a token: send `authorization: Bearer <token>`",
        _ => "the bearer token is not one this server accepts",
    });
    counter!(names::AUTH_REFUSED, "reason" => reason).increment(1);
    refused(path, &status);
    tracing::debug!(path, reason, remote = ?peer.and_then(|p| p.remote), "call refused: UNAUTHENTICATED");
    Box::pin(std::future::ready(Ok(status.into_http())))
}

/// The caller names seen as metric labels, up to [`MAX_CALLERS`].
#[derive(Default)]
struct Callers {
    seen: Mutex<HashSet<Arc<str>>>,
}

impl Callers {
    fn label(&self, caller: &Arc<str>) -> String {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(caller) || seen.len() < MAX_CALLERS && seen.insert(Arc::clone(caller)) {
            caller.to_string()
        } else {
            "other".to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn tokens_are_found_by_value_and_named() {
        let tokens =
            Tokens::parse(&format!("# callers\n{A} camera-7\n\n  {B}   # no name\n")).unwrap();
        assert_eq!(tokens.name_of(A.as_bytes()).as_deref(), Some("camera-7"));
        assert_eq!(tokens.name_of(B.as_bytes()).as_deref(), Some("unnamed"));
        assert_eq!(tokens.name_of(&A.as_bytes()[1..]), None);
        assert_eq!(tokens.name_of(b""), None);
        let hashed = "cccccccc#cccccccccccccccc";
        let tokens = Tokens::parse(&format!("{hashed} with-a-hash # comment")).unwrap();
        assert_eq!(
            tokens.name_of(hashed.as_bytes()).as_deref(),
            Some("with-a-hash")
        );
    }

    #[test]
    fn a_bad_token_file_is_refused_by_line_without_quoting_it() {
        for (text, want) in [
            ("tinysecret camera", "line 1: a token shorter"),
            (&format!("{A} name extra") as &str, "line 1: more than"),
            ("# only comments\n\n", "has no token"),
            (
                &format!("{A}\n{B}\u{7f}x"),
                "line 2: a token no client could send",
            ),
        ] {
            let message = format!("{:#}", Tokens::parse(text).err().expect(want));
            assert!(message.contains(want), "{message:?} lacks {want:?}");
            assert!(
                !message.contains("tinysecret") && !message.contains(A),
                "{message:?}"
            );
        }
    }

    fn request(authorization: Option<&str>) -> http::Request<()> {
        let mut request = http::Request::new(());
        if let Some(value) = authorization {
            request
                .headers_mut()
                .insert(http::header::AUTHORIZATION, value.parse().unwrap());
        }
        request
    }

    #[test]
    fn the_bearer_token_is_read_in_any_case_of_the_scheme() {
        assert_eq!(bearer(&request(Some("Bearer abc"))), Some(&b"abc"[..]));
        assert_eq!(bearer(&request(Some("bearer  abc "))), Some(&b"abc"[..]));
        assert_eq!(bearer(&request(Some("Basic abc"))), None);
        assert_eq!(bearer(&request(Some("Bearer "))), None);
        assert_eq!(bearer(&request(None)), None);
    }

    #[test]
    fn caller_labels_are_bounded() {
        let callers = Callers::default();
        for i in 0..MAX_CALLERS {
            assert_eq!(callers.label(&Arc::from(format!("c{i}"))), format!("c{i}"));
        }
        assert_eq!(callers.label(&Arc::from("late")), "other");
        assert_eq!(callers.label(&Arc::from("c0")), "c0");
    }
}
