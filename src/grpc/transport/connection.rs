//! How connections are run: HTTP/2 settings (streams per connection, rapid-reset limits,
//! keepalive pings, a maximum age with a grace period) and TCP options, each a flag. tonic's
//! defaults suit a trusted network; these suit clients that may be broken or hostile, behind
//! meshes and load balancers.

use std::{
    future::Future,
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    time::Sleep,
};
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::TcpIncoming;

/// Connection settings; `None` leaves a feature off.
#[derive(Debug, Clone)]
pub struct Connection {
    /// Concurrent HTTP/2 streams (calls) one connection may have open
    /// (SETTINGS_MAX_CONCURRENT_STREAMS); more wait in the client.
    pub max_concurrent_streams: Option<u32>,
    /// Streams the client resets before the server accepts them, pending at once, before the
    /// connection is closed (GOAWAY): the HTTP/2 "rapid reset" attack (CVE-2023-44487).
    pub max_pending_accept_reset_streams: usize,
    /// Streams the server had to reset for the client's protocol errors before the connection
    /// is closed (tonic's default switches this protection off).
    pub max_local_error_reset_streams: usize,
    /// HTTP/2 PING interval on an idle connection, and how long the answer may take before the
    /// connection is closed: finds peers that vanished without closing.
    pub keepalive: Option<(Duration, Duration)>,
    /// After this age a connection is sent GOAWAY (its calls finish, new ones go to a new
    /// connection: meshes and load balancers rebalance); after `max_age_grace` more, it is closed.
    pub max_age: Option<Duration>,
    pub max_age_grace: Duration,
    /// TCP_NODELAY: small messages (results, pings) go out at once.
    pub tcp_nodelay: bool,
    /// TCP keepalive probes after this much silence: finds dead peers under the HTTP/2 layer.
    pub tcp_keepalive: Option<Duration>,
}

impl Connection {
    /// The server builder with these settings.
    pub(in crate::grpc) fn builder(&self) -> tonic::transport::Server {
        let mut builder = tonic::transport::Server::builder()
            .max_concurrent_streams(self.max_concurrent_streams)
            .http2_max_pending_accept_reset_streams(Some(self.max_pending_accept_reset_streams))
            .http2_max_local_error_reset_streams(Some(self.max_local_error_reset_streams))
            .http2_keepalive_interval(self.keepalive.map(|(interval, _)| interval))
            .http2_keepalive_timeout(self.keepalive.map(|(_, timeout)| timeout));
        if let Some(age) = self.max_age {
            // Only the age: given a grace as well, tonic 0.14 sends no GOAWAY at the age, it
            // only cuts the connection at age + grace. The cut is `Aged`'s job below.
            builder = builder.max_connection_age(age);
        }
        builder
    }

    /// The accepted connections of `listener`, with the TCP options set (tonic's builder
    /// options for them apply only where tonic binds the listener itself).
    pub(super) fn incoming(
        &self,
        listener: TcpListener,
    ) -> impl Stream<Item = io::Result<Aged>> + use<> {
        let close_after = self.max_age.map(|age| age + self.max_age_grace);
        TcpIncoming::from(listener)
            .with_nodelay(Some(self.tcp_nodelay))
            .with_keepalive(self.tcp_keepalive)
            .map(move |accepted| accepted.map(|stream| Aged::new(stream, close_after)))
    }
}

/// A connection that fails once it has lived `close_after` (maximum age + grace): whatever the
/// GOAWAY at the maximum age did not end by then is cut.
pub(in crate::grpc) struct Aged {
    stream: TcpStream,
    close: Option<Pin<Box<Sleep>>>,
}

impl Aged {
    fn new(stream: TcpStream, close_after: Option<Duration>) -> Self {
        Self {
            stream,
            close: close_after.map(|d| Box::pin(tokio::time::sleep(d))),
        }
    }

    /// The client's address, for logs.
    pub(super) fn remote(&self) -> Option<std::net::SocketAddr> {
        self.stream.peer_addr().ok()
    }

    /// An error once the connection is past its time. Polled by every read (the server always
    /// has one pending), so the timer's wake-up reaches the connection.
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        let close = self.close.as_mut()?;
        close.as_mut().poll(cx).is_ready().then(|| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                "connection closed: past its maximum age and grace (--max-connection-age-*)",
            )
        })
    }
}

impl AsyncRead for Aged {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(e) = self.expired(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Aged {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The TCP options, read back from a socket that [`Connection::incoming`] accepted: no client
/// can see the server's socket options, so they are checked here, in process.
#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::os::fd::AsRawFd;

    use super::*;

    fn option(stream: &TcpStream, level: libc::c_int, name: libc::c_int) -> libc::c_int {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `value` and `len` are valid for writes, and `len` is `value`'s size.
        let rc = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                level,
                name,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "getsockopt: {}", io::Error::last_os_error());
        value
    }

    /// (TCP_NODELAY, SO_KEEPALIVE, TCP_KEEPIDLE in seconds) of a connection `connection` accepted.
    async fn options(nodelay: bool, keepalive: Option<Duration>) -> (i32, i32, i32) {
        let connection = Connection {
            max_concurrent_streams: None,
            max_pending_accept_reset_streams: 20,
            max_local_error_reset_streams: 1024,
            keepalive: None,
            max_age: None,
            max_age_grace: Duration::ZERO,
            tcp_nodelay: nodelay,
            tcp_keepalive: keepalive,
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let mut incoming = std::pin::pin!(connection.incoming(listener));
        let _client = TcpStream::connect(addr).await.expect("connect");
        let accepted = incoming
            .next()
            .await
            .expect("a connection")
            .expect("accept");
        let s = &accepted.stream;
        (
            option(s, libc::IPPROTO_TCP, libc::TCP_NODELAY),
            option(s, libc::SOL_SOCKET, libc::SO_KEEPALIVE),
            option(s, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE),
        )
    }

    #[tokio::test]
    async fn accepted_connections_get_the_tcp_options() {
        let (nodelay, keepalive, idle) = options(true, Some(Duration::from_secs(37))).await;
        assert_eq!((nodelay, keepalive, idle), (1, 1, 37));
    }

    #[tokio::test]
    async fn tcp_options_stay_off_when_switched_off() {
        let (nodelay, keepalive, _) = options(false, None).await;
        assert_eq!((nodelay, keepalive), (0, 0));
    }
}
