//! HTTP/2 and TCP settings of the gRPC port.

use std::time::Duration;

use clap::Args;

use crate::grpc::transport::Connection;

/// HTTP/2 and TCP, as a production gRPC server runs them (tonic's defaults leave every one of
/// these off).
#[derive(Debug, Clone, Args)]
pub struct ConnectionArgs {
    /// Concurrent calls (HTTP/2 streams) per connection; a client's further calls wait for one to
    /// finish (0: no limit).
    #[arg(
        long,
        env = "SIGLIP_HTTP2_MAX_CONCURRENT_STREAMS",
        default_value_t = 256
    )]
    pub http2_max_concurrent_streams: u32,

    /// Streams a client may reset before the server has accepted them, pending at once; more
    /// closes the connection (HTTP/2 rapid reset, CVE-2023-44487).
    #[arg(
        long,
        env = "SIGLIP_HTTP2_MAX_PENDING_ACCEPT_RESET_STREAMS",
        default_value_t = 20
    )]
    pub http2_max_pending_accept_reset_streams: usize,

    /// Streams the server may reset for a client's protocol errors on one connection; more
    /// closes the connection.
    #[arg(
        long,
        env = "SIGLIP_HTTP2_MAX_LOCAL_ERROR_RESET_STREAMS",
        default_value_t = 1024
    )]
    pub http2_max_local_error_reset_streams: usize,

    /// Seconds between HTTP/2 PINGs on a connection (0: none); a peer that does not answer within
    /// --http2-keepalive-timeout-seconds is disconnected.
    #[arg(
        long,
        env = "SIGLIP_HTTP2_KEEPALIVE_INTERVAL_SECONDS",
        default_value_t = 60
    )]
    pub http2_keepalive_interval_seconds: u64,

    /// Seconds a PING's answer may take.
    #[arg(
        long,
        env = "SIGLIP_HTTP2_KEEPALIVE_TIMEOUT_SECONDS",
        default_value_t = 20
    )]
    pub http2_keepalive_timeout_seconds: u64,

    /// Seconds after which a connection is sent GOAWAY, so that clients reconnect and meshes
    /// rebalance (0: never); calls in flight go on.
    #[arg(
        long,
        env = "SIGLIP_MAX_CONNECTION_AGE_SECONDS",
        default_value_t = 1800
    )]
    pub max_connection_age_seconds: u64,

    /// Seconds a connection past its age may take to finish its calls before it is closed.
    #[arg(
        long,
        env = "SIGLIP_MAX_CONNECTION_AGE_GRACE_SECONDS",
        default_value_t = 60
    )]
    pub max_connection_age_grace_seconds: u64,

    /// TCP_NODELAY on accepted connections (results and pings go out at once).
    #[arg(long, env = "SIGLIP_TCP_NODELAY", default_value_t = true, action = clap::ArgAction::Set)]
    pub tcp_nodelay: bool,

    /// Seconds of silence before TCP keepalive probes (0: none).
    #[arg(long, env = "SIGLIP_TCP_KEEPALIVE_SECONDS", default_value_t = 60)]
    pub tcp_keepalive_seconds: u64,
}

impl ConnectionArgs {
    pub fn connection(&self) -> Connection {
        let seconds = |s: u64| (s > 0).then(|| Duration::from_secs(s));
        Connection {
            max_concurrent_streams: (self.http2_max_concurrent_streams > 0)
                .then_some(self.http2_max_concurrent_streams),
            max_pending_accept_reset_streams: self.http2_max_pending_accept_reset_streams,
            max_local_error_reset_streams: self.http2_max_local_error_reset_streams,
            keepalive: seconds(self.http2_keepalive_interval_seconds).map(|interval| {
                (
                    interval,
                    Duration::from_secs(self.http2_keepalive_timeout_seconds),
                )
            }),
            max_age: seconds(self.max_connection_age_seconds),
            max_age_grace: Duration::from_secs(self.max_connection_age_grace_seconds),
            tcp_nodelay: self.tcp_nodelay,
            tcp_keepalive: seconds(self.tcp_keepalive_seconds),
        }
    }
}
