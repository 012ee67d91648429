//! Every call of the two APIs runs inside its span (`telemetry::call_span`), made here where
//! the request's headers (the caller's trace context) and path are at hand; calls of other
//! services (health, reflection) are not traced, nor calls refused for their token (before this
//! layer: anyone can send those). A unary call's first stage, `receive`, is its
//! request arriving (a slow client or sidecar shows here), until its body ends. With tracing off
//! this adds nothing.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use futures_util::future::Either;
use http_body::{Frame, SizeHint};
use tonic::body::Body;
use tower::{Layer, Service};
use tracing::{instrument::Instrumented, Instrument, Span};

use super::calls;
use crate::telemetry;

#[derive(Clone, Copy)]
pub(super) struct Traced;

impl<S> Layer<S> for Traced {
    type Service = TracedService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TracedService { inner }
    }
}

#[derive(Clone)]
pub(super) struct TracedService<S> {
    inner: S,
}

impl<S> Service<http::Request<Body>> for TracedService<S>
where
    S: Service<http::Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    /// The call itself when it is not traced: nothing boxed, nothing added.
    type Future = Either<S::Future, Instrumented<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if !telemetry::enabled() {
            return Either::Left(self.inner.call(request));
        }
        let Some((service, method)) = calls::service_method(request.uri().path()) else {
            return Either::Left(self.inner.call(request));
        };
        let span = telemetry::call_span(service, method, request.headers());
        let request = match STREAMING_REQUESTS.contains(&method) || span.is_none() {
            true => request,
            false => {
                let receiving = telemetry::child(&span, "receive");
                request.map(|inner| {
                    Body::new(Receiving {
                        inner,
                        span: Some(receiving),
                    })
                })
            }
        };
        Either::Right(self.inner.call(request).instrument(span))
    }
}

/// The methods whose requests are streams: their messages arrive over the call's life.
const STREAMING_REQUESTS: [&str; 3] = ["Upload", "Stream", "ModelStreamInfer"];

/// A request body that ends its `receive` span when it ends (or fails, or is dropped).
struct Receiving {
    inner: Body,
    span: Option<Span>,
}

impl http_body::Body for Receiving {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            self.span = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
