//! Calls tonic refuses before a handler runs — a unary request over the message limit, or one
//! that is not valid protobuf — answered with this API's codes (`status::remap_response`) and
//! counted in the request metrics under the call's method, as a handler would have counted them.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

use tower::{Layer, Service};

use super::status::remap_response;
use crate::grpc::calls::{method, record};

#[derive(Debug, Clone, Copy)]
pub(in crate::grpc) struct MalformedCalls {
    pub(in crate::grpc) max_message_bytes: usize,
}

impl<S> Layer<S> for MalformedCalls {
    type Service = Remapped<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Remapped {
            inner,
            max_message_bytes: self.max_message_bytes,
        }
    }
}

#[derive(Debug, Clone)]
pub(in crate::grpc) struct Remapped<S> {
    inner: S,
    max_message_bytes: usize,
}

impl<S, B, RB> Service<http::Request<B>> for Remapped<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = method(request.uri().path());
        let limit = self.max_message_bytes;
        let started = Instant::now();
        let response = self.inner.call(request);
        Box::pin(async move {
            let mut response = response.await?;
            if let Some(status) = remap_response(&mut response, limit) {
                if let Some(method) = method {
                    record(method, "", &status, started);
                }
            }
            Ok(response)
        })
    }
}
