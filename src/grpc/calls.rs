//! Every call counted, timed and logged the same way
//! (`siglip_grpc_requests_total{method,code,model}`, `siglip_grpc_request_duration_seconds`, a
//! line per call), whichever way it ends: by the API's handlers, or refused before them (the
//! server hands [`record_refused`] to the transport).

use std::{future::Future, sync::OnceLock, time::Instant};

use ::metrics::{counter, gauge, histogram};
use tonic::{Code, Status};

use crate::{metrics, telemetry};

/// The model a call is about, known once its handler has read the request: the `model` label of
/// the call's metrics (empty until then, and for a name the repository does not have).
#[derive(Default)]
pub(super) struct CallModel(OnceLock<String>);

impl CallModel {
    pub(super) fn set(&self, label: String) {
        telemetry::record_model(&label);
        let _ = self.0.set(label);
    }

    pub(super) fn get(&self) -> &str {
        self.0.get().map_or("", String::as_str)
    }
}

/// Counts, times and logs one call, and tracks it as in flight. A call dropped before it
/// finishes (the client went away) is counted as CANCELLED.
pub(super) async fn observed<T>(
    method: &'static str,
    model: &CallModel,
    call: impl Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    struct InFlight<'a> {
        method: &'static str,
        model: &'a CallModel,
        started: Instant,
        finished: bool,
    }
    impl Drop for InFlight<'_> {
        fn drop(&mut self) {
            gauge!(metrics::INFLIGHT).decrement(1.0);
            if !self.finished {
                record(self.method, self.model.get(), &client_gone(), self.started);
            }
        }
    }
    gauge!(metrics::INFLIGHT).increment(1.0);
    let mut in_flight = InFlight {
        method,
        model,
        started: Instant::now(),
        finished: false,
    };
    let result = call.await;
    in_flight.finished = true;
    match &result {
        Ok(_) => record_ok(method, model.get(), in_flight.started),
        Err(status) => record(method, model.get(), status, in_flight.started),
    }
    result
}

/// How a call whose client went away ends: counted as CANCELLED; nobody receives it.
pub(super) fn client_gone() -> Status {
    Status::cancelled("the client went away")
}

pub(super) fn record_ok(method: &'static str, model: &str, started: Instant) {
    telemetry::record_status(Code::Ok);
    counter!(metrics::GRPC_REQUESTS, "method" => method, "code" => code_name(Code::Ok), "model" => model.to_string())
        .increment(1);
    histogram!(metrics::GRPC_DURATION, "method" => method, "model" => model.to_string())
        .record(started.elapsed());
    tracing::debug!(
        method,
        model,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "request handled"
    );
}

pub(super) fn record(method: &'static str, model: &str, status: &Status, started: Instant) {
    telemetry::record_status(status.code());
    counter!(metrics::GRPC_REQUESTS, "method" => method, "code" => code_name(status.code()), "model" => model.to_string())
        .increment(1);
    histogram!(metrics::GRPC_DURATION, "method" => method, "model" => model.to_string())
        .record(started.elapsed());
    if status.code() == Code::Cancelled {
        // Clients hang up all the time (a closed video stream): not a server problem.
        tracing::debug!(method, model, "client went away");
    } else {
        tracing::warn!(
            method,
            model,
            code = code_name(status.code()),
            message = status.message(),
            "request failed"
        );
    }
}

/// A call to `path` refused before it reached a handler (no token): counted under its method
/// and code (other services' calls are not counted), but neither timed (it took no work) nor
/// logged above debug (anyone can send such calls, as fast as they like).
pub(super) fn record_refused(path: &str, status: &Status) {
    if let Some(method) = method(path) {
        counter!(metrics::GRPC_REQUESTS, "method" => method, "code" => code_name(status.code()), "model" => "")
            .increment(1);
    }
}

/// The canonical upper-case name of a status code, as gRPC tooling prints it.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The `method` label of a `siglip.v1.Siglip` or `inference.GRPCInferenceService` call's path;
/// other services are not counted.
pub(super) fn method(path: &str) -> Option<&'static str> {
    service_method(path).map(|(_, method)| method)
}

/// The service and method of a call's path, for the two APIs' implemented methods only.
pub(super) fn service_method(path: &str) -> Option<(&'static str, &'static str)> {
    let (service, name) = path.strip_prefix('/')?.split_once('/')?;
    let (service, methods): (&'static str, &[&'static str]) = match service {
        "siglip.v1.Siglip" => ("siglip.v1.Siglip", &metrics::METHODS),
        "inference.GRPCInferenceService" => {
            ("inference.GRPCInferenceService", &metrics::OIP_METHODS)
        }
        _ => return None,
    };
    let method = methods.iter().copied().find(|m| *m == name)?;
    Some((service, method))
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_the_apis_methods_are_named() {
        assert_eq!(
            super::method("/siglip.v1.Siglip/Classify"),
            Some("Classify")
        );
        assert_eq!(super::method("/siglip.v1.Siglip/Nope"), None);
        assert_eq!(
            super::method("/inference.GRPCInferenceService/ModelInfer"),
            Some("ModelInfer")
        );
        assert_eq!(super::method("/siglip.v1.Siglip/ModelInfer"), None);
        assert_eq!(super::method("/grpc.health.v1.Health/Check"), None);
    }
}
