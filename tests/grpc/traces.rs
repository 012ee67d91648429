//! Distributed tracing end to end: a real OTLP/gRPC receiver (`tools::otlp_sink`, a tonic
//! `TraceService`) gets the server's spans. A call with a caller's `traceparent` (or B3) must
//! continue that trace with its stages under it; a batch is one span linked to every call in it;
//! a stream's frames, and an inference stream's requests, are traced at their own ratio; Upload's
//! reassembly is a stage of its own; sampling follows the ratio and the caller;
//! a collector that goes away costs no call; nothing a caller sent appears in a span.

use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::{
    common::v1::{any_value::Value, KeyValue},
    trace::v1::Span,
};
use siglip_serve::grpc::pb;
use siglip_serve::tools::otlp_sink::OtlpSink;
use tonic::{metadata::MetadataValue, Request};

use super::*;
use crate::common::{asset, server::Server, wait_until, Scratch};

/// Exports every 50 ms (the SDK's default is 5 s): the tests wait for spans, not for the timer.
const FAST_EXPORT: (&str, &str) = ("OTEL_BSP_SCHEDULE_DELAY", "50");

async fn traced_server(sink: &OtlpSink, extra: &[&str]) -> Server {
    let endpoint = sink.endpoint();
    let mut flags = vec!["--otlp-endpoint", endpoint.as_str()];
    flags.extend_from_slice(extra);
    Server::ready_model(
        &crate::common::generated("SIGLIP_TEST_MODEL_DIR"),
        &flags,
        &[FAST_EXPORT],
    )
    .await
}

/// A fresh W3C trace id and parent span id, as hex, and the `traceparent` naming them sampled.
fn parent(n: u8) -> (String, String, String) {
    let trace = format!(
        "{:032x}",
        0x5151_0000_0000_0000_0000_0000_0000_0000u128 + n as u128
    );
    let span = format!("{:016x}", 0xabcd_0000_0000_0000u64 + n as u64);
    let traceparent = format!("00-{trace}-{span}-01");
    (trace, span, traceparent)
}

fn with_header<T>(message: T, key: &'static str, value: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert(key, MetadataValue::try_from(value).unwrap());
    request
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

fn int_attr(span: &Span, key: &str) -> Option<i64> {
    match attr(span, key) {
        Some(Value::IntValue(v)) => Some(*v),
        _ => None,
    }
}

fn str_attr<'a>(span: &'a Span, key: &str) -> Option<&'a str> {
    match attr(span, key) {
        Some(Value::StringValue(v)) => Some(v),
        _ => None,
    }
}

fn duration(span: &Span) -> Duration {
    Duration::from_nanos(
        span.end_time_unix_nano
            .saturating_sub(span.start_time_unix_nano),
    )
}

/// The spans of trace `trace` (hex), once one named `root` has arrived.
async fn trace_of(sink: &OtlpSink, trace: &str, root: &str) -> Vec<Span> {
    wait_until(&format!("the {root} span of trace {trace}"), async || {
        sink.spans()
            .iter()
            .any(|s| hex(&s.trace_id) == trace && s.name == root)
    })
    .await;
    sink.spans()
        .into_iter()
        .filter(|s| hex(&s.trace_id) == trace)
        .collect()
}

fn children<'a>(spans: &'a [Span], parent: &Span) -> Vec<&'a Span> {
    spans
        .iter()
        .filter(|s| s.parent_span_id == parent.span_id)
        .collect()
}

/// Asserts that each of `stages` is among the names of `parent`'s children (`what`: whose).
fn assert_stages(spans: &[Span], parent: &Span, stages: &[&str], what: &str) {
    let names: Vec<&str> = children(spans, parent)
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    for want in stages {
        assert!(names.contains(want), "{what} {want}: {names:?}");
    }
}

const CLASSIFY: &str = "siglip.v1.Siglip/Classify";

/// A Classify of the rocket against [`LABELS`] with no trace context, which must succeed
/// (`what`: the failure's message).
async fn untraced_classify(
    client: &mut siglip_serve::grpc::pb::siglip_client::SiglipClient<tonic::transport::Channel>,
    what: &str,
) {
    client
        .classify(classify_request(asset("rocket.bmp"), labels()))
        .await
        .expect(what);
}

#[tokio::test]
async fn a_traced_classify_continues_the_callers_trace_with_its_stages() {
    let sink = OtlpSink::start(true).await.unwrap();
    let server = traced_server(&sink, &[]).await;
    let mut client = server.client().await;
    // The labels' embeddings cached first: the traced call's stages then run one after another.
    untraced_classify(&mut client, "warm-up").await;
    let (trace, caller, traceparent) = parent(1);
    let request = with_header(
        classify_request(asset("rocket.bmp"), labels()),
        "traceparent",
        &traceparent,
    );
    let called = Instant::now();
    client.classify(request).await.expect("classify");
    let round_trip = called.elapsed();

    let spans = trace_of(&sink, &trace, CLASSIFY).await;
    // The tree the README shows (`cargo test … -- --nocapture`).
    println!("{}", siglip_serve::tools::otlp_sink::tree(&spans));
    let call = spans.iter().find(|s| s.name == CLASSIFY).unwrap();
    assert_eq!(
        hex(&call.parent_span_id),
        caller,
        "the caller's span is the parent"
    );
    assert_eq!(call.kind, 2, "a server span");
    assert_eq!(str_attr(call, "rpc.system"), Some("grpc"));
    assert_eq!(str_attr(call, "rpc.service"), Some("siglip.v1.Siglip"));
    assert_eq!(str_attr(call, "rpc.method"), Some("Classify"));
    assert_eq!(int_attr(call, "rpc.grpc.status_code"), Some(0));
    assert_eq!(int_attr(call, "siglip.images"), Some(1));
    assert_eq!(int_attr(call, "siglip.texts"), Some(LABELS.len() as i64));
    assert!(str_attr(call, "siglip.model").is_some_and(|m| !m.is_empty()));
    assert!(
        duration(call) <= round_trip,
        "the server's span lies within the client's call"
    );

    let stages = children(&spans, call);
    let names: Vec<&str> = stages.iter().map(|s| s.name.as_str()).collect();
    for want in [
        "receive",
        "admission",
        "decode",
        "preprocess",
        "text_cache_hit",
        "queue",
        "inference",
    ] {
        assert_eq!(
            names.iter().filter(|n| **n == want).count(),
            1,
            "one {want} span under the call: {names:?}"
        );
    }
    for stage in &stages {
        assert!(
            stage.start_time_unix_nano >= call.start_time_unix_nano
                && stage.end_time_unix_nano <= call.end_time_unix_nano,
            "{} lies within the call",
            stage.name
        );
    }
    // With the labels cached, the stages run one after another and make up the call: what they
    // leave out is converting the request, scoring, building the answer and the wake-ups between
    // threads (longer on a loaded machine). Stated slack: at most a quarter of the call, or 10 ms
    // on a call shorter than 40 ms.
    let sequential: Duration = stages
        .iter()
        .filter(|s| s.name != "text_cache_hit")
        .map(|s| duration(s))
        .sum();
    let call_time = duration(call);
    let slack = (call_time / 4).max(Duration::from_millis(10));
    assert!(
        sequential <= call_time && call_time - sequential <= slack,
        "the stages take {sequential:?} of the call's {call_time:?} (slack {slack:?}): {:?}",
        stages
            .iter()
            .map(|s| (
                s.name.as_str(),
                Duration::from_nanos(s.start_time_unix_nano - call.start_time_unix_nano),
                duration(s)
            ))
            .collect::<Vec<_>>()
    );
    let queue = stages.iter().find(|s| s.name == "queue").unwrap();
    assert_eq!(str_attr(queue, "siglip.tower"), Some("vision"));

    // The inference span links to its batch, a root of its own linked back to the call.
    let inference = stages.iter().find(|s| s.name == "inference").unwrap();
    assert_eq!(
        inference.links.len(),
        1,
        "the inference span links its batch"
    );
    let batch_id = inference.links[0].span_id.clone();
    wait_until("the batch span", async || {
        sink.spans().iter().any(|s| s.span_id == batch_id)
    })
    .await;
    let batch = sink
        .spans()
        .into_iter()
        .find(|s| s.span_id == batch_id)
        .unwrap();
    assert_eq!(batch.name, "batch");
    assert!(batch.parent_span_id.is_empty(), "the batch is a root");
    assert!(batch.links.iter().any(|l| l.span_id == call.span_id));
    assert_eq!(int_attr(&batch, "siglip.batch_size"), Some(1));
    assert_eq!(str_attr(&batch, "siglip.device"), Some("cpu"));
    for key in ["siglip.model", "siglip.dtype", "siglip.backend"] {
        assert!(str_attr(&batch, key).is_some(), "the batch has {key}");
    }
}

#[tokio::test]
async fn a_traced_model_infer_continues_the_callers_trace_too() {
    let sink = OtlpSink::start(true).await.unwrap();
    let server = traced_server(&sink, &[]).await;
    let (trace, caller, traceparent) = parent(5);
    let image = asset("rocket.bmp");
    crate::oip::oip(&server)
        .await
        .model_infer(with_header(
            crate::oip::zero_shot("zero-shot", "1", &[&image]),
            "traceparent",
            &traceparent,
        ))
        .await
        .expect("ModelInfer");
    let name = "inference.GRPCInferenceService/ModelInfer";
    let spans = trace_of(&sink, &trace, name).await;
    let call = spans.iter().find(|s| s.name == name).unwrap();
    assert_eq!(hex(&call.parent_span_id), caller);
    assert_eq!(
        str_attr(call, "rpc.service"),
        Some("inference.GRPCInferenceService")
    );
    assert_eq!(int_attr(call, "rpc.grpc.status_code"), Some(0));
    assert_eq!(int_attr(call, "siglip.images"), Some(1));
    assert_eq!(int_attr(call, "siglip.texts"), Some(LABELS.len() as i64));
    assert_stages(
        &spans,
        call,
        &[
            "receive",
            "tokenize",
            "decode",
            "preprocess",
            "queue",
            "inference",
        ],
        "ModelInfer's",
    );
}

#[tokio::test]
async fn a_batch_of_four_traced_callers_is_one_span_linked_to_all_four() {
    let sink = OtlpSink::start(true).await.unwrap();
    // A batch closes when it holds 4 images, or after 2 s: the 4 calls below make one.
    let server = traced_server(
        &sink,
        &["--max-batch-size", "4", "--max-batch-delay-ms", "2000"],
    )
    .await;
    let mut client = server.client().await;
    untraced_classify(&mut client, "warm-up").await;
    let callers: Vec<_> = (10..14).map(parent).collect();
    let calls = callers.iter().map(|(_, _, traceparent)| {
        let mut client = client.clone();
        let request = with_header(
            classify_request(asset("rocket.bmp"), labels()),
            "traceparent",
            traceparent,
        );
        async move { client.classify(request).await }
    });
    for answer in futures_util::future::join_all(calls).await {
        let answer = answer.expect("classify").into_inner();
        assert_eq!(answer.timings.unwrap().batch_size, 4);
    }
    let mut call_ids = Vec::new();
    for (trace, _, _) in &callers {
        let spans = trace_of(&sink, trace, CLASSIFY).await;
        call_ids.push(
            spans
                .iter()
                .find(|s| s.name == CLASSIFY)
                .unwrap()
                .span_id
                .clone(),
        );
    }
    wait_until("a batch span linked to the four calls", async || {
        sink.spans().iter().any(|s| {
            s.name == "batch"
                && str_attr(s, "siglip.tower") == Some("vision")
                && call_ids
                    .iter()
                    .all(|id| s.links.iter().any(|l| &l.span_id == id))
        })
    })
    .await;
    let batches: Vec<Span> = sink
        .spans()
        .into_iter()
        .filter(|s| s.name == "batch" && s.links.iter().any(|l| call_ids.contains(&l.span_id)))
        .collect();
    assert_eq!(batches.len(), 1, "one batch ran the four calls");
    assert_eq!(batches[0].links.len(), 4);
    assert_eq!(int_attr(&batches[0], "siglip.batch_size"), Some(4));
}

#[tokio::test]
async fn a_streams_frames_are_traced_at_the_frame_ratio() {
    let sink = OtlpSink::start(true).await.unwrap();
    let server = traced_server(&sink, &["--trace-frame-ratio", "0.25"]).await;
    let mut client = server.client().await;
    let (trace, caller, traceparent) = parent(20);
    let mut messages = vec![config(&LABELS, pb::DeliveryMode::EveryFrame)];
    messages.extend((0..20).map(|id| frame(id, asset("rocket.bmp"))));
    let request = with_header(tokio_stream::iter(messages), "traceparent", &traceparent);
    let results = stream_request(&mut client, request).await;
    assert_eq!(results.len(), 20);

    let spans = trace_of(&sink, &trace, "siglip.v1.Siglip/Stream").await;
    let stream = spans
        .iter()
        .find(|s| s.name == "siglip.v1.Siglip/Stream")
        .unwrap();
    assert_eq!(hex(&stream.parent_span_id), caller);
    assert_eq!(int_attr(stream, "rpc.grpc.status_code"), Some(0));
    let frames: Vec<&Span> = children(&spans, stream)
        .into_iter()
        .filter(|s| s.name == "frame")
        .collect();
    let ids: Vec<i64> = frames
        .iter()
        .filter_map(|f| int_attr(f, "siglip.frame"))
        .collect();
    assert_eq!(frames.len(), 5, "a quarter of 20 frames: {ids:?}");
    for frame in frames {
        assert_stages(
            &spans,
            frame,
            &["admission", "decode", "preprocess", "queue", "inference"],
            "a frame's",
        );
        assert_eq!(int_attr(frame, "siglip.images"), Some(1));
    }
}

#[tokio::test]
async fn ratio_zero_traces_only_what_a_sampled_caller_asks_for() {
    let sink = OtlpSink::start(true).await.unwrap();
    let server = traced_server(&sink, &["--trace-sample-ratio", "0"]).await;
    let mut client = server.client().await;
    // No parent, and a parent that says "not sampled": neither is traced.
    untraced_classify(&mut client, "classify").await;
    let (_, _, unsampled) = parent(30);
    client
        .classify(with_header(
            classify_request(asset("rocket.bmp"), labels()),
            "traceparent",
            &unsampled.replace("-01", "-00"),
        ))
        .await
        .expect("classify");
    // A sampled B3 parent (multi-header, as Envoy sends it) is honoured.
    let (trace, caller, _) = parent(31);
    let mut request = with_header(
        classify_request(asset("rocket.bmp"), labels()),
        "x-b3-traceid",
        &trace,
    );
    for (key, value) in [("x-b3-spanid", caller.as_str()), ("x-b3-sampled", "1")] {
        request
            .metadata_mut()
            .insert(key, MetadataValue::try_from(value).unwrap());
    }
    client.classify(request).await.expect("classify");
    // So is a sampled single-header B3 parent (`b3: trace-span-1`).
    let (single_trace, single_caller, _) = parent(32);
    client
        .classify(with_header(
            classify_request(asset("rocket.bmp"), labels()),
            "b3",
            &format!("{single_trace}-{single_caller}-1"),
        ))
        .await
        .expect("classify");
    for (trace, caller) in [(&trace, &caller), (&single_trace, &single_caller)] {
        let spans = trace_of(&sink, trace, CLASSIFY).await;
        let call = spans.iter().find(|s| s.name == CLASSIFY).unwrap();
        assert_eq!(&hex(&call.parent_span_id), caller);
    }
    // The spans of the earlier calls would have been exported no later than these.
    let traces: std::collections::HashSet<String> =
        sink.spans().iter().map(|s| hex(&s.trace_id)).collect();
    let batches = sink.spans().iter().filter(|s| s.name == "batch").count();
    assert_eq!(
        traces.len() - batches,
        2,
        "only the sampled callers' traces (and their batches'): {traces:?}"
    );
}

#[tokio::test]
async fn a_collector_that_goes_away_costs_no_call_and_its_spans_are_counted() {
    let sink = OtlpSink::start(true).await.unwrap();
    let server = traced_server(&sink, &[]).await;
    let mut client = server.client().await;
    // 20 calls with the collector up, then 20 with it gone: the second lot all succeed, and take
    // no longer than twice the first (plus 50 ms for a busy machine), measured in this run.
    let mut timed = async || {
        let started = Instant::now();
        for _ in 0..20 {
            untraced_classify(&mut client, "every call is served, collector or not").await;
        }
        started.elapsed()
    };
    let with_collector = timed().await;
    wait_until("spans exported", async || {
        server.metric("siglip_trace_spans_exported_total").await > 0.0
    })
    .await;
    sink.stop().await;
    let without = timed().await;
    assert!(
        without <= with_collector * 2 + Duration::from_millis(50),
        "20 calls took {without:?} with the collector gone, {with_collector:?} with it up"
    );
    wait_until("the lost spans counted", async || {
        server
            .metric("siglip_trace_spans_dropped_total{reason=\"export_failed\"}")
            .await
            > 0.0
    })
    .await;
}

#[tokio::test]
async fn spans_past_the_export_queue_are_dropped_and_counted_not_waited_for() {
    let sink = OtlpSink::start(true).await.unwrap();
    // Room for 2 finished spans: a call makes about 8, all ended within the 50 ms between
    // exports.
    let server = traced_server(&sink, &["--trace-queue-spans", "2"]).await;
    let mut client = server.client().await;
    for _ in 0..5 {
        untraced_classify(&mut client, "classify").await;
    }
    wait_until("spans dropped for the full queue", async || {
        server
            .metric("siglip_trace_spans_dropped_total{reason=\"queue_full\"}")
            .await
            > 0.0
    })
    .await;
    wait_until("the ones queued exported", async || {
        server.metric("siglip_trace_spans_exported_total").await > 0.0
    })
    .await;
}

#[tokio::test]
async fn no_token_label_or_image_byte_appears_in_any_span() {
    const TOKEN: &str = "s3cr3t-t0ken-that-must-not-leak-0123456789";
    let scratch = Scratch::new("trace-secrets");
    let tokens = scratch.write("tokens", &format!("{TOKEN} tracer\n"));
    let sink = OtlpSink::start(true).await.unwrap();
    let server = traced_server(&sink, &["--auth-tokens-file", &tokens]).await;
    let mut client = server.client().await;
    let secret_labels = vec![
        "a photo of a very particular zebra".to_string(),
        "an unmistakable label text".to_string(),
    ];
    let image = asset("rocket.bmp");
    let (trace, _, traceparent) = parent(40);
    let mut request = with_header(
        classify_request(image.clone(), secret_labels.clone()),
        "traceparent",
        &traceparent,
    );
    request.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {TOKEN}")).unwrap(),
    );
    client.classify(request).await.expect("classify");
    trace_of(&sink, &trace, CLASSIFY).await;
    let values: Vec<String> = sink
        .spans()
        .iter()
        .flat_map(|s| {
            let mut all = vec![s.name.clone()];
            all.extend(s.attributes.iter().map(value_text));
            all.extend(
                s.events
                    .iter()
                    .flat_map(|e| e.attributes.iter().map(value_text)),
            );
            all
        })
        .collect();
    assert!(values.len() > 10, "spans with attributes arrived");
    let image_prefix = String::from_utf8_lossy(&image[..16]).into_owned();
    for value in &values {
        assert!(!value.contains(TOKEN), "the token leaked: {value}");
        assert!(
            !value.contains("Bearer"),
            "an authorization header leaked: {value}"
        );
        for label in &secret_labels {
            assert!(!value.contains(label.as_str()), "a label leaked: {value}");
        }
        assert!(
            !value.contains(&image_prefix),
            "image bytes leaked: {value}"
        );
        assert!(value.len() <= 64, "no attribute carries a payload: {value}");
    }
}

/// An attribute's value as text, whatever its type.
fn value_text(kv: &KeyValue) -> String {
    match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::BytesValue(b)) => String::from_utf8_lossy(b).into_owned(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

#[tokio::test]
async fn json_log_lines_inside_a_traced_call_carry_its_trace_and_span_ids() {
    let scratch = Scratch::new("trace-logs");
    let log_path = scratch.path("serve.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let sink = OtlpSink::start(true).await.unwrap();
    let endpoint = sink.endpoint();
    let server = Server::spawn_logging(
        &crate::common::generated("SIGLIP_TEST_MODEL_DIR"),
        &["--otlp-endpoint", &endpoint, "--log-json"],
        &[FAST_EXPORT, ("RUST_LOG", "warn")],
        std::process::Stdio::from(log),
    );
    server
        .wait_for(tonic_health::pb::health_check_response::ServingStatus::Serving)
        .await;
    // A call that fails is logged ("request failed") inside its span.
    let (trace, _, traceparent) = parent(50);
    let mut client = server.client().await;
    client
        .classify(with_header(
            classify_request(asset("rocket.bmp"), Vec::new()),
            "traceparent",
            &traceparent,
        ))
        .await
        .expect_err("no labels");
    let spans = trace_of(&sink, &trace, CLASSIFY).await;
    let call = spans.iter().find(|s| s.name == CLASSIFY).unwrap();
    assert_eq!(
        int_attr(call, "rpc.grpc.status_code"),
        Some(3),
        "INVALID_ARGUMENT"
    );
    let text = std::fs::read_to_string(&log_path).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("request failed"))
        .unwrap_or_else(|| panic!("no failed request logged: {text}"));
    // The line docs/tracing.md shows (`-- --nocapture`).
    println!("{line}");
    let json: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
    assert_eq!(json["span"]["trace_id"], trace.as_str(), "{line}");
    assert_eq!(
        json["span"]["span_id"],
        hex(&call.span_id).as_str(),
        "{line}"
    );
}

#[tokio::test]
async fn an_upload_is_traced_with_its_reassembly() {
    let sink = OtlpSink::start(true).await.unwrap();
    let server = traced_server(&sink, &[]).await;
    let (trace, caller, traceparent) = parent(40);
    let image = asset("rocket.bmp");
    let mut messages = vec![crate::upload::header(image.len())];
    messages.extend(image.chunks(1024).map(crate::upload::chunk));
    let request = with_header(tokio_stream::iter(messages), "traceparent", &traceparent);
    server.client().await.upload(request).await.expect("upload");
    let name = "siglip.v1.Siglip/Upload";
    let spans = trace_of(&sink, &trace, name).await;
    let call = spans.iter().find(|s| s.name == name).unwrap();
    assert_eq!(hex(&call.parent_span_id), caller);
    assert_eq!(int_attr(call, "rpc.grpc.status_code"), Some(0));
    assert_stages(
        &spans,
        call,
        &["reassembly", "decode", "preprocess", "queue", "inference"],
        "Upload's",
    );
}

#[tokio::test]
async fn an_inference_streams_requests_are_traced_at_the_frame_ratio() {
    let sink = OtlpSink::start(true).await.unwrap();
    let server = traced_server(&sink, &["--trace-frame-ratio", "0.5"]).await;
    let (trace, caller, traceparent) = parent(41);
    let image = asset("rocket.bmp");
    let requests: Vec<_> = (0..4)
        .map(|id| crate::oip::zero_shot("zero-shot", &id.to_string(), &[&image]))
        .collect();
    let mut answers = crate::oip::oip(&server)
        .await
        .model_stream_infer(with_header(
            tokio_stream::iter(requests),
            "traceparent",
            &traceparent,
        ))
        .await
        .expect("ModelStreamInfer")
        .into_inner();
    let mut answered = 0;
    while let Some(answer) = answers.next().await {
        assert!(answer.expect("answer").error_message.is_empty());
        answered += 1;
    }
    assert_eq!(answered, 4);
    let name = "inference.GRPCInferenceService/ModelStreamInfer";
    let spans = trace_of(&sink, &trace, name).await;
    let stream = spans.iter().find(|s| s.name == name).unwrap();
    assert_eq!(hex(&stream.parent_span_id), caller);
    let requests: Vec<&Span> = children(&spans, stream)
        .into_iter()
        .filter(|s| s.name == "request")
        .collect();
    assert_eq!(requests.len(), 2, "half of 4 requests");
    for request in requests {
        assert_stages(
            &spans,
            request,
            &["decode", "preprocess", "queue", "inference"],
            "a request's",
        );
    }
}
