//! Connections and who may call: TCP and HTTP/2 settings (`connection`), TLS and mutual TLS on
//! the accepted connections (`tls`), bearer tokens checked before any handler (`auth`), and the
//! TLS and token files re-read as they change (`reload`). Knows nothing of SigLIP: the API's
//! calls are counted through `grpc::calls`.

mod auth;
mod connection;
mod reload;
mod tls;

use std::{io, path::PathBuf, pin::Pin, sync::Arc, time::Duration};

use tokio::net::TcpListener;
use tokio_stream::{Stream, StreamExt};

pub(super) use auth::Authorize;
pub use auth::Tokens;
pub use connection::Connection;
pub use reload::Reloading;
pub(super) use tls::Peer;
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

/// The connections accepted on `listener`, run with `connection`'s TCP settings, each through its
/// TLS handshake when there is TLS.
pub(super) fn incoming(
    listener: TcpListener,
    connection: &Connection,
    tls: Option<Tls>,
) -> Pin<Box<dyn Stream<Item = io::Result<Peer>> + Send>> {
    let accepted = connection.incoming(listener);
    match tls {
        Some(tls) => Box::pin(tls.handshakes(accepted)),
        None => Box::pin(accepted.map(|a| a.map(Peer::Plain))),
    }
}

/// Where the security material lives, and how it is used: what the flags say, before any file
/// is read.
#[derive(Debug, Clone)]
pub struct SecurityFiles {
    pub tls: Option<TlsFiles>,
    pub handshakes: Handshakes,
    pub tokens: Option<PathBuf>,
    /// How often the TLS and token files are checked for changes (`--watch-seconds`).
    pub reload_poll: Duration,
    pub reflection: bool,
}

impl Security {
    /// Reads the TLS material and the token file (an error stops the start), and keeps
    /// re-reading them every `reload_poll`.
    pub fn load(files: SecurityFiles) -> anyhow::Result<Self> {
        let tls = files
            .tls
            .map(|tls| Tls::load(&tls, files.reload_poll, files.handshakes))
            .transpose()?;
        let tokens = files
            .tokens
            .map(|path| Tokens::load(path, files.reload_poll))
            .transpose()?;
        Ok(Self {
            tls,
            tokens,
            reflection: files.reflection,
        })
    }

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
