//! The HTTP/2 settings, seen from the wire: each test runs the server with small flag values and
//! watches the frames it sends with a raw HTTP/2 client (hand-written frames over a TcpStream,
//! which, unlike a real client, can ignore SETTINGS, reset streams and leave PINGs unanswered)
//! or with the `h2` client.
//!
//! TCP_NODELAY and TCP keepalive are not here: they are options of the server's socket, and
//! nothing a client sees tells them apart (getsockopt on the client's socket says nothing of the
//! server's, and keepalive probes only flow after minutes of silence). They are checked in
//! process instead, on a socket the server's own accept path produced (the unit tests of
//! `src/grpc/connection.rs`).

use std::{
    future::Future,
    time::{Duration, Instant},
};

use prost::Message;
use siglip_serve::grpc::pb;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::common::{asset, server::Server};
use crate::transport::under_attack;
use crate::{config, frame, LABELS};

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;

const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

const CANCEL: u32 = 0x8;
const REFUSED_STREAM: u32 = 0x7;
const ENHANCE_YOUR_CALM: u32 = 0xb;

const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;

/// One HTTP/2 frame as received.
#[derive(Debug)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

impl Frame {
    /// The error code of a RST_STREAM or GOAWAY.
    fn error_code(&self) -> u32 {
        let at = if self.kind == GOAWAY { 4 } else { 0 };
        u32::from_be_bytes(self.payload[at..at + 4].try_into().unwrap())
    }
}

fn encode(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    out.extend([kind, flags]);
    out.extend(stream.to_be_bytes());
    out.extend(payload);
    out
}

/// HEADERS opening a gRPC call to `method` on `stream` (HPACK literals, no Huffman coding).
fn call(stream: u32, method: &str, end_stream: bool) -> Vec<u8> {
    fn literal(out: &mut Vec<u8>, s: &str) {
        out.push(s.len() as u8);
        out.extend(s.as_bytes());
    }
    // :method POST, :scheme http (static table entries 3 and 6).
    let mut block = vec![0x83, 0x86];
    // :path, :authority, content-type: literals with static-table names 4, 1 and 31.
    block.push(0x04);
    literal(&mut block, &format!("/siglip.v1.Siglip/{method}"));
    block.push(0x01);
    literal(&mut block, "localhost");
    block.extend([0x0f, 0x10]);
    literal(&mut block, "application/grpc");
    block.push(0x00);
    literal(&mut block, "te");
    literal(&mut block, "trailers");
    let flags = END_HEADERS | if end_stream { END_STREAM } else { 0 };
    encode(HEADERS, flags, stream, &block)
}

/// `messages` as gRPC-framed DATA frames on `stream`, the last one ending it.
fn messages(stream: u32, messages: &[Vec<u8>]) -> Vec<u8> {
    let mut body = Vec::new();
    for m in messages {
        body.push(0);
        body.extend((m.len() as u32).to_be_bytes());
        body.extend(m);
    }
    let chunks: Vec<&[u8]> = body.chunks(16_384).collect();
    let mut out = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let last = i + 1 == chunks.len();
        out.extend(encode(
            DATA,
            if last { END_STREAM } else { 0 },
            stream,
            chunk,
        ));
    }
    out
}

fn reset(stream: u32) -> Vec<u8> {
    encode(RST_STREAM, 0, stream, &CANCEL.to_be_bytes())
}

fn ping(payload: [u8; 8]) -> Vec<u8> {
    encode(PING, 0, 0, &payload)
}

/// A hand-driven HTTP/2 client connection.
struct Raw {
    tcp: TcpStream,
    /// Answer the server's PINGs (a live peer) or leave them unanswered (a vanished one).
    pong: bool,
    opened: Instant,
}

impl Raw {
    /// Sends the preface and empty SETTINGS, and acknowledges the server's SETTINGS, which it
    /// returns.
    async fn connect(server: &Server, pong: bool) -> (Raw, Frame) {
        let mut raw = Raw {
            tcp: TcpStream::connect(&server.addr).await.expect("connect"),
            pong,
            opened: Instant::now(),
        };
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend(encode(SETTINGS, 0, 0, &[]));
        raw.send(&hello).await;
        let settings = loop {
            let f = raw.next().await.expect("the server's SETTINGS");
            if f.kind == SETTINGS && f.flags & ACK == 0 {
                break f;
            }
        };
        raw.send(&encode(SETTINGS, ACK, 0, &[])).await;
        (raw, settings)
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.tcp.write_all(bytes).await.expect("send frames");
    }

    /// The next frame; `None` once the server has closed the connection. PINGs are answered
    /// here when `pong` (and still returned).
    async fn next(&mut self) -> Option<Frame> {
        let mut head = [0u8; 9];
        self.tcp.read_exact(&mut head).await.ok()?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0; len];
        self.tcp.read_exact(&mut payload).await.ok()?;
        let frame = Frame {
            kind: head[3],
            flags: head[4],
            stream: u32::from_be_bytes(head[5..9].try_into().unwrap()) & 0x7fff_ffff,
            payload,
        };
        if self.pong && frame.kind == PING && frame.flags & ACK == 0 {
            let pong = encode(PING, ACK, 0, &frame.payload);
            // The server may already be gone; the next read says so.
            let _ = self.tcp.write_all(&pong).await;
        }
        Some(frame)
    }

    /// Frames until the first that `wanted` accepts; fails if the connection closes first.
    async fn until(&mut self, what: &str, wanted: impl Fn(&Frame) -> bool) -> Frame {
        loop {
            match self.next().await {
                Some(f) if wanted(&f) => return f,
                Some(_) => {}
                None => panic!("the connection closed before {what}"),
            }
        }
    }

    /// Reads until the server closes the connection; returns when, from connect.
    async fn closed(&mut self) -> Duration {
        while self.next().await.is_some() {}
        self.opened.elapsed()
    }
}

/// A GetModelInfo request, gRPC-framed, for the `h2` client.
fn model_info_body() -> bytes::Bytes {
    bytes::Bytes::from_static(&[0, 0, 0, 0, 0])
}

fn grpc_request(method: &str) -> http::Request<()> {
    http::Request::post(format!("http://localhost/siglip.v1.Siglip/{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap()
}

/// `--http2-max-concurrent-streams 2`: the server advertises 2 in its SETTINGS, so a real
/// client (`h2`) holds a third call back until one of its two open calls ends.
#[tokio::test]
async fn a_connection_gets_the_advertised_number_of_concurrent_streams() {
    let server = Server::ready(&[
        "--http2-max-concurrent-streams",
        "2",
        "--first-message-timeout-seconds",
        "30",
    ])
    .await;
    let tcp = TcpStream::connect(&server.addr).await.expect("connect");
    let (sender, mut conn) = h2::client::handshake(tcp).await.expect("handshake");
    // Drive the connection until the server's SETTINGS are in (the client's limit starts out
    // unbounded).
    tokio::time::timeout(
        Duration::from_secs(5),
        std::future::poll_fn(|cx| {
            let driven = std::pin::Pin::new(&mut conn).poll(cx);
            assert!(driven.is_pending(), "connection ended: {driven:?}");
            if conn.max_concurrent_send_streams() == usize::MAX {
                std::task::Poll::Pending
            } else {
                std::task::Poll::Ready(())
            }
        }),
    )
    .await
    .expect("the server's SETTINGS within 5 s");
    assert_eq!(conn.max_concurrent_send_streams(), 2);
    tokio::spawn(conn);

    // Two Streams that have sent nothing yet hold both.
    let mut sender = sender.ready().await.expect("ready");
    let (_first, mut first_body) = sender
        .send_request(grpc_request("Stream"), false)
        .expect("first stream");
    let mut sender = sender.ready().await.expect("ready");
    let (_second, _second_body) = sender
        .send_request(grpc_request("Stream"), false)
        .expect("second stream");
    // A third call waits in the client...
    let mut sender = sender.ready().await.expect("ready");
    let (third, mut third_body) = sender
        .send_request(grpc_request("GetModelInfo"), false)
        .expect("third call queued");
    third_body
        .send_data(model_info_body(), true)
        .expect("third call's message");
    let mut third = Box::pin(third);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut third)
            .await
            .is_err(),
        "a third call was answered while two streams held the connection"
    );
    // ...and goes out, and is answered, as soon as one of the two ends.
    first_body.send_reset(h2::Reason::CANCEL);
    let answer = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("the third call answered within 5 s of a slot freeing")
        .expect("response");
    assert_eq!(answer.status(), 200);
}

/// A client that ignores the advertised limit has its extra streams refused (REFUSED_STREAM);
/// each refusal counts toward `--http2-max-local-error-reset-streams`, and past it the
/// connection is closed with GOAWAY ENHANCE_YOUR_CALM.
#[tokio::test]
async fn streams_past_the_limit_are_refused_and_a_client_that_persists_is_disconnected() {
    let server = Server::ready(&[
        "--http2-max-concurrent-streams",
        "2",
        "--http2-max-local-error-reset-streams",
        "3",
        "--first-message-timeout-seconds",
        "30",
    ])
    .await;
    let (mut raw, settings) = Raw::connect(&server, true).await;
    let advertised = settings
        .payload
        .chunks(6)
        .find(|s| u16::from_be_bytes([s[0], s[1]]) == SETTINGS_MAX_CONCURRENT_STREAMS)
        .map(|s| u32::from_be_bytes(s[2..6].try_into().unwrap()));
    assert_eq!(advertised, Some(2), "{settings:?}");

    let mut opens = Vec::new();
    for id in [1, 3, 5] {
        opens.extend(call(id, "Stream", false));
    }
    raw.send(&opens).await;
    let refused = raw
        .until("stream 5 is refused", |f| f.kind == RST_STREAM)
        .await;
    assert_eq!((refused.stream, refused.error_code()), (5, REFUSED_STREAM));

    // Three refusals are allowed (5, 7, 9); the fourth (11) closes the connection.
    let mut more = Vec::new();
    for id in [7, 9, 11] {
        more.extend(call(id, "Stream", false));
    }
    raw.send(&more).await;
    let mut refused = vec![5];
    let goaway = loop {
        let f = raw.next().await.expect("a GOAWAY before the close");
        match f.kind {
            RST_STREAM => {
                assert_eq!(f.error_code(), REFUSED_STREAM, "{f:?}");
                refused.push(f.stream);
            }
            GOAWAY => break f,
            _ => {}
        }
    };
    assert_eq!(refused, [5, 7, 9]);
    assert_eq!(goaway.error_code(), ENHANCE_YOUR_CALM, "{goaway:?}");
    raw.closed().await;
    server.served().await;
}

/// `connections` raw connections at once, each writing `calls` complete GetModelInfo calls in
/// one write and reading until every one is answered: the shape of the rapid-reset attack below
/// (handshakes, a burst of frames each, the replies parsed), with nothing hostile in it.
async fn benign_load(server: &Server, connections: usize, calls: u32) {
    let one = async || {
        let (mut raw, _) = Raw::connect(server, true).await;
        let mut burst = Vec::new();
        for i in 0..calls {
            burst.extend(call(1 + 2 * i, "GetModelInfo", false));
            burst.extend(messages(1 + 2 * i, &[Vec::new()]));
        }
        raw.send(&burst).await;
        let mut answered = 0;
        while answered < calls {
            let f = raw
                .next()
                .await
                .expect("a benign connection is kept until answered");
            assert_ne!(f.kind, GOAWAY, "GOAWAY to a benign connection: {f:?}");
            assert_ne!(f.kind, RST_STREAM, "a benign call was reset: {f:?}");
            if f.kind == HEADERS && f.flags & END_STREAM != 0 {
                answered += 1;
            }
        }
    };
    futures_util::future::join_all((0..connections).map(|_| one())).await;
}

/// CVE-2023-44487: streams opened and reset at once cost the server work but never count as
/// concurrent. Past `--http2-max-pending-accept-reset-streams` of them pending at once, the
/// connection gets GOAWAY ENHANCE_YOUR_CALM and is closed; a client under the limit keeps its
/// connection; the server grows by less than 64 MiB over 20 attacking connections; and a
/// well-behaved caller is served throughout.
///
/// The attack costs both processes real work whatever the server does (20 handshakes, 4000
/// frames written and parsed, by this test too), so the well-behaved caller's latency during
/// it is held to [`under_attack`] of its latency during a benign load of the same shape,
/// measured just before: the attack may cost what that traffic costs, not more.
#[tokio::test(flavor = "multi_thread")]
async fn rapid_resets_close_the_connection() {
    const CONNECTIONS: usize = 20;
    let server = Server::ready(&["--http2-max-pending-accept-reset-streams", "10"]).await;
    let idle = server.idle_latency(3).await;
    let ((), benign) = tokio::join!(benign_load(&server, CONNECTIONS, 10), async {
        let mut slowest = Duration::ZERO;
        for _ in 0..3 {
            slowest = slowest.max(server.served().await);
        }
        slowest
    });
    let rss_before = server.rss();

    // Under the limit: 5 open-and-reset streams, then a PING that is answered.
    let (mut polite, _) = Raw::connect(&server, true).await;
    let mut burst = Vec::new();
    for i in 0..5 {
        burst.extend(call(1 + 2 * i, "GetModelInfo", false));
        burst.extend(reset(1 + 2 * i));
    }
    burst.extend(ping(*b"under it"));
    polite.send(&burst).await;
    let answer = polite
        .until("the PING's answer", |f| {
            assert_ne!(f.kind, GOAWAY, "GOAWAY under the limit: {f:?}");
            f.kind == PING && f.flags & ACK != 0
        })
        .await;
    assert_eq!(answer.payload, b"under it");

    // Over it: 200 in one write, from 20 connections at once.
    let server = &server;
    let attacks = (0..CONNECTIONS).map(|_| async move {
        let (mut raw, _) = Raw::connect(server, true).await;
        let mut burst = Vec::new();
        for i in 0..200 {
            burst.extend(call(1 + 2 * i, "GetModelInfo", false));
            burst.extend(reset(1 + 2 * i));
        }
        // The server may close before it has read all of it.
        let _ = raw.tcp.write_all(&burst).await;
        let goaway = raw.until("GOAWAY", |f| f.kind == GOAWAY).await;
        assert_eq!(goaway.error_code(), ENHANCE_YOUR_CALM, "{goaway:?}");
        raw.closed().await
    });
    let (closed, during) = tokio::join!(futures_util::future::join_all(attacks), server.served());
    for after in closed {
        assert!(
            after < Duration::from_secs(5),
            "closed {after:?} after connect"
        );
    }
    let bound = under_attack(benign.max(idle));
    eprintln!("rapid resets: served in {during:?} during, {benign:?} benign, {idle:?} idle");
    assert!(
        during <= bound,
        "served in {during:?} during the attack, {benign:?} during a benign load like it, \
         {idle:?} idle (bound {bound:?})"
    );
    let grown = server.rss().saturating_sub(rss_before);
    assert!(grown < 64 << 20, "the server grew by {} MiB", grown >> 20);
    server.served().await;
}

/// `--http2-keepalive-interval-seconds 1 --http2-keepalive-timeout-seconds 1`: a peer that
/// never answers PINGs (as one that vanished without closing) is disconnected within
/// interval + timeout + slack; one that answers keeps its connection. The slack is for the
/// server's timers firing late on a busy machine: a second, or ten of this server's round trips
/// (measured first) where those are slower.
#[tokio::test]
async fn a_peer_that_does_not_answer_pings_is_disconnected() {
    const INTERVAL: Duration = Duration::from_secs(1);
    const TIMEOUT: Duration = Duration::from_secs(1);
    let server = Server::ready(&[
        "--http2-keepalive-interval-seconds",
        &INTERVAL.as_secs().to_string(),
        "--http2-keepalive-timeout-seconds",
        &TIMEOUT.as_secs().to_string(),
    ])
    .await;
    let rtt = server.round_trip(3).await;
    let slack = (rtt * 10).max(Duration::from_secs(1));
    // Long enough for two PINGs, each up to the slack late.
    let watched = INTERVAL * 2 + slack + Duration::from_millis(500);
    let silent = async {
        let (mut raw, _) = Raw::connect(&server, false).await;
        raw.until("a PING", |f| f.kind == PING && f.flags & ACK == 0)
            .await;
        let pinged = raw.opened.elapsed();
        (pinged, raw.closed().await)
    };
    let alive = async {
        let (mut raw, _) = Raw::connect(&server, true).await;
        let mut pings = 0;
        while raw.opened.elapsed() < watched {
            let next = tokio::time::timeout(Duration::from_millis(500), raw.next()).await;
            match next {
                Ok(Some(f)) if f.kind == PING && f.flags & ACK == 0 => pings += 1,
                Ok(Some(_)) | Err(_) => {}
                Ok(None) => panic!("a peer that answers PINGs was disconnected"),
            }
        }
        pings
    };
    let ((pinged, closed), pings) = tokio::join!(silent, alive);
    assert!(
        pinged < INTERVAL + slack,
        "first PING {pinged:?} after connect (interval {INTERVAL:?}, slack {slack:?})"
    );
    assert!(
        closed >= INTERVAL + TIMEOUT / 2 && closed < INTERVAL + TIMEOUT + slack,
        "a silent peer was disconnected {closed:?} after connect (interval {INTERVAL:?} + \
         timeout {TIMEOUT:?}, slack {slack:?})"
    );
    assert!(
        pings >= 2,
        "{pings} PINGs in {watched:?} (interval {INTERVAL:?})"
    );
}

/// `--max-connection-age-seconds 1 --max-connection-age-grace-seconds G`: at 1 s every
/// connection gets a GOAWAY (tonic 0.14 sends none at the age when a grace is set: the server
/// sets the age alone and cuts connections at age + grace itself). An idle connection then
/// closes at once; a call opened before the GOAWAY is still served after it; a call still open
/// at age + grace is cut. A tonic Channel carries on across all this by reconnecting (a call
/// that races a GOAWAY may fail once: tonic has no transparent retry).
///
/// The windows are the timers' precision plus a slack of half a second or ten round trips
/// (measured first, on a server of its own), whichever is more. The call served after the
/// GOAWAY is sent when the GOAWAY arrives, up to a slack late, and must be answered before the
/// cut: the grace G is a second, or more where a call takes longer on this machine and model
/// (measured on that server too, with its labels cached as they are here).
#[tokio::test(flavor = "multi_thread")]
async fn old_connections_get_a_goaway_and_are_closed_after_the_grace() {
    const AGE: Duration = Duration::from_secs(1);
    let (idle, rtt) = {
        let probe = Server::ready(&[]).await;
        (probe.idle_latency(3).await, probe.round_trip(3).await)
    };
    let slack = Duration::from_millis(500).max(rtt * 10);
    // Whole seconds: room for three such calls after a GOAWAY that came a slack late.
    let grace = Duration::from_secs((slack + idle * 3).as_secs_f64().ceil().max(1.0) as u64);
    let server = Server::ready(&[
        "--max-connection-age-seconds",
        &AGE.as_secs().to_string(),
        "--max-connection-age-grace-seconds",
        &grace.as_secs().to_string(),
        "--first-message-timeout-seconds",
        "30",
    ])
    .await;
    // The labels cached: the call after the GOAWAY runs the vision tower alone.
    server.served().await;
    let cut_at = AGE + grace;
    let run = cut_at + Duration::from_millis(1500);
    let window = |at: Duration, from: Duration, to: Duration| at >= from && at < to;
    let ms = Duration::from_millis;

    let idle_conn = async {
        let (mut raw, _) = Raw::connect(&server, true).await;
        raw.until("GOAWAY", |f| f.kind == GOAWAY).await;
        let goaway = raw.opened.elapsed();
        (goaway, raw.closed().await)
    };
    let served_after_goaway = async {
        let (mut raw, _) = Raw::connect(&server, true).await;
        raw.send(&call(1, "Stream", false)).await;
        raw.until("GOAWAY", |f| f.kind == GOAWAY).await;
        let goaway = raw.opened.elapsed();
        let request = [
            config(&LABELS, pb::DeliveryMode::EveryFrame).encode_to_vec(),
            frame(1, asset("astronaut_224.jpg")).encode_to_vec(),
        ];
        raw.send(&messages(1, &request)).await;
        let mut body = Vec::new();
        loop {
            let f = raw.next().await.unwrap_or_else(|| {
                panic!(
                    "the connection closed before the call sent after the GOAWAY was answered \
                     (grace {grace:?}; a call alone takes {idle:?})"
                )
            });
            assert!(f.kind != RST_STREAM || f.stream != 1, "call reset: {f:?}");
            if f.stream == 1 && f.kind == DATA {
                body.extend(&f.payload);
            }
            if f.stream == 1 && f.kind == HEADERS && f.flags & END_STREAM != 0 {
                break;
            }
        }
        let answered = raw.opened.elapsed();
        let result = pb::StreamResponse::decode(&body[5..]).expect("a StreamResponse");
        assert_eq!(result.frame_id, 1);
        (goaway, answered, raw.closed().await)
    };
    let cut = async {
        let (mut raw, _) = Raw::connect(&server, true).await;
        raw.send(&call(1, "Stream", false)).await;
        raw.until("GOAWAY", |f| f.kind == GOAWAY).await;
        raw.closed().await
    };
    // tonic's client has no transparent retry (gRPC's retry of a call that never reached the
    // server): a call it sends on a connection at the moment the GOAWAY arrives fails with
    // "connection closed". That may happen once per GOAWAY (every second here), and the next
    // call must succeed on a new connection.
    let channel = async {
        let mut client = server.client().await;
        let started = Instant::now();
        let (mut calls, mut raced, mut last_failed) = (0, 0, false);
        while started.elapsed() < run {
            match client
                .get_model_info(pb::GetModelInfoRequest::default())
                .await
            {
                Ok(_) => {
                    calls += 1;
                    last_failed = false;
                }
                // The race shows as UNAVAILABLE "connection closed", as CANCELLED with the
                // closed connection only in its source (hyper's `Canceled`), or, when the call's
                // stream opened after the GOAWAY it never saw, as h2's error naming that graceful
                // GOAWAY (`GoAway(.., NO_ERROR, Remote)`, seen on a loaded machine).
                Err(s) if !last_failed && raced_goaway(&s) => {
                    raced += 1;
                    last_failed = true;
                }
                Err(s) => panic!("call {calls} at {:?}: {s:?}", started.elapsed()),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (calls, raced)
    };
    let ((goaway, idle_closed), (goaway2, answered, closed2), cut, (calls, raced)) =
        tokio::join!(idle_conn, served_after_goaway, cut, channel);
    eprintln!(
        "connection age: grace {grace:?} (a call alone {idle:?}), answered {answered:?}, GOAWAY \
         {goaway2:?}, {calls} calls, {raced} raced, round trip {rtt:?}"
    );
    // One GOAWAY per connection, and a connection lasts at least the age.
    let goaways = (run.as_secs_f64() / AGE.as_secs_f64()).ceil() as usize;
    assert!(
        raced <= goaways,
        "{raced} calls raced a GOAWAY in {run:?} (age {AGE:?})"
    );
    for at in [goaway, goaway2] {
        assert!(
            window(at, AGE - ms(100), AGE + slack),
            "GOAWAY {at:?} after connect (age {AGE:?})"
        );
    }
    assert!(
        idle_closed < goaway + slack,
        "an idle connection closed {idle_closed:?} after connect, GOAWAY at {goaway:?}"
    );
    assert!(
        answered < goaway2 + grace,
        "answered at {answered:?}, GOAWAY at {goaway2:?} (grace {grace:?}; a call alone takes \
         {idle:?})"
    );
    assert!(
        closed2 < cut_at + slack,
        "closed at {closed2:?} (age {AGE:?} + grace {grace:?})"
    );
    assert!(
        window(cut, cut_at - ms(100), cut_at + slack + ms(300)),
        "a call open past the grace was cut {cut:?} after connect (age {AGE:?} + grace {grace:?})"
    );
    // A call every 50 ms and a round trip, half of them at least: reconnecting after each
    // GOAWAY and the sleep's own lateness cost the rest.
    let expected = run.as_secs_f64() / (ms(50) + rtt).as_secs_f64() / 2.0;
    assert!(
        calls as f64 >= expected,
        "{calls} calls in {run:?}, a round trip {rtt:?}: at least {expected:.0} expected"
    );
}

/// Whether a call failed because it raced the server's graceful GOAWAY (it never reached the
/// server; gRPC's transparent retry, which tonic lacks, would resend it).
fn raced_goaway(status: &tonic::Status) -> bool {
    let seen = format!("{status:?}");
    seen.contains("connection closed") || (seen.contains("GoAway(") && seen.contains("NO_ERROR"))
}
