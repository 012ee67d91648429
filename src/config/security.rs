//! Who may connect and call: the flags for TLS, mutual TLS, bearer tokens and reflection.

use std::{path::PathBuf, time::Duration};

use clap::Args;

use crate::grpc::transport::{Handshakes, SecurityFiles, TlsFiles};

/// Who may connect and call: TLS, mutual TLS, bearer tokens, reflection. The files are re-read
/// as they change (see `grpc::transport::Reloading`).
#[derive(Debug, Clone, Args)]
pub struct SecurityArgs {
    /// PEM certificate chain for TLS on the gRPC port (with --tls-key); plaintext without.
    #[arg(long, env = "SIGLIP_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "SIGLIP_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificates: clients must present a certificate signed by one (mutual TLS).
    #[arg(long, env = "SIGLIP_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Seconds a TLS handshake may take before the connection is closed.
    #[arg(long, env = "SIGLIP_TLS_HANDSHAKE_TIMEOUT_SECONDS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub tls_handshake_timeout_seconds: u64,

    /// TLS handshakes in progress at once; further connections wait, unaccepted, until one ends.
    #[arg(long, env = "SIGLIP_MAX_TLS_HANDSHAKES", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_tls_handshakes: u64,

    /// Bearer tokens, one per line as `<token> [name]`: every call but health must carry one
    /// (`authorization: Bearer <token>`).
    #[arg(long, env = "SIGLIP_AUTH_TOKENS_FILE")]
    pub auth_tokens_file: Option<PathBuf>,

    /// Seconds between checks of the TLS and token files for changes; new material applies to
    /// new connections and calls.
    #[arg(long, env = "SIGLIP_WATCH_SECONDS", default_value_t = 2,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub watch_seconds: u64,

    /// Serve gRPC server reflection (behind the tokens, when there are tokens).
    #[arg(long, env = "SIGLIP_REFLECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub reflection: bool,
}

impl SecurityArgs {
    /// Where the material lives (the transport reads it: `grpc::transport::Security::load`).
    pub fn files(&self) -> SecurityFiles {
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.tls_client_ca.clone(),
            }),
            _ => None,
        };
        SecurityFiles {
            tls,
            handshakes: Handshakes {
                timeout: Duration::from_secs(self.tls_handshake_timeout_seconds),
                max_in_progress: self.max_tls_handshakes as usize,
            },
            tokens: self.auth_tokens_file.clone(),
            reload_poll: Duration::from_secs(self.watch_seconds),
            reflection: self.reflection,
        }
    }
}
