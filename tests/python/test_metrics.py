"""Prometheus metrics: /metrics passes `promtool check metrics`, every series exists from start-up,
a real Prometheus server scraping siglip-serve sees traffic move the counters, through
Prometheus' own query API, and a call the client abandons is counted as CANCELLED."""

import json
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import grpc
import pytest
from conftest import serve_command

STARTUP_TIMEOUT_S = 120

# Series a dashboard needs, present (at zero) before the first request; `model` is the served model's
# name (its folder's).
def from_start(model: str) -> list[str]:
    m = f'model="{model}"'
    return [
        f'siglip_grpc_requests_total{{method="Classify",code="OK",{m}}} 0',
        f'siglip_grpc_requests_total{{method="Stream",code="OK",{m}}} 0',
        'siglip_stream_frames_dropped_total{reason="superseded"} 0',
        'siglip_stream_frames_dropped_total{reason="rate"} 0',
        'siglip_stream_frames_dropped_total{reason="stale"} 0',
        f'siglip_requests_dropped_total{{reason="deadline",{m}}} 0',
        f"siglip_images_processed_total{{{m}}} 0",
        f"siglip_texts_processed_total{{{m}}} 0",
        f"siglip_text_cache_hits_total{{{m}}} 0",
        f"siglip_text_cache_misses_total{{{m}}} 0",
        f"siglip_received_bytes_total{{{m}}} 0",
        f"siglip_queue_depth{{{m}}} 0",
        "siglip_pending_images 0",
        f"siglip_inference_worker_panics_total{{{m}}} 0",
        f"siglip_model_load_failures_total{{{m}}} 0",
        "siglip_active_streams 0",
        "siglip_inflight_requests 0",
        f'siglip_grpc_request_duration_seconds_count{{method="Classify",{m}}} 0',
        f'siglip_inference_duration_seconds_count{{tower="vision",{m}}} 0',
        f"siglip_batch_size_count{{{m}}} 0",
        f"siglip_queue_wait_seconds_count{{{m}}} 0",
        "siglip_stream_result_staleness_seconds_count 0",
    ]


PRESENT = ["siglip_model_info{", "siglip_build_info{", "process_resident_memory_bytes ", "process_cpu_seconds_total "]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def scrape(addr: str) -> str:
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=10) as response:
        return response.read().decode()


def wait_for_series(addr: str, series: list[str], timeout_s: float = 30) -> set[str]:
    """Scrapes until every line in ``series`` is there; returns the last scrape's lines."""
    deadline = time.monotonic() + timeout_s
    while True:
        lines = set(scrape(addr).splitlines())
        missing = [line for line in series if line not in lines]
        if not missing:
            return lines
        seen = sorted(line for line in lines if line.startswith("siglip_") and not line.endswith(" 0"))
        assert time.monotonic() < deadline, f"never seen: {missing}; non-zero series: {seen}"
        time.sleep(0.05)


def start_metered(server_bin: Path, model_dir: Path, logs: Path, flags=()):
    """Yields (grpc address, metrics address) of a fresh server started with `flags`, once it is ready;
    at the end it must stop cleanly on SIGTERM."""
    stdout, stderr = logs / "stdout.log", logs / "stderr.log"
    cmd = serve_command(server_bin, model_dir, flags)
    with stdout.open("wb") as out, stderr.open("wb") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        text = stdout.read_text()
        grpc_addr = re.search(r"gRPC listening on (\S+)", text)
        metrics_addr = re.search(r"metrics listening on (\S+)", text)
        if grpc_addr and metrics_addr and "siglip_ready 1" in scrape(metrics_addr.group(1)).splitlines():
            break
        assert proc.poll() is None, stderr.read_text()
        time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail(f"server never became ready:\n{stderr.read_text()}", pytrace=False)
    yield grpc_addr.group(1), metrics_addr.group(1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, stderr.read_text()


@pytest.fixture(scope="module")
def metered(server_bin: Path, model_dir: Path, tmp_path_factory):
    """(grpc address, metrics address) of a fresh server that has served nothing yet."""
    yield from start_metered(server_bin, model_dir, tmp_path_factory.mktemp("metered"))


@pytest.fixture
def holding(server_bin: Path, model_dir: Path, tmp_path_factory):
    """(grpc address, metrics address) of a fresh server whose batches wait 30 s for others to join
    them: a call stays in the server until it is cancelled, whatever the machine's speed (and a
    cancelled call costs nothing of that wait)."""
    yield from start_metered(server_bin, model_dir, tmp_path_factory.mktemp("holding"),
                             ["--max-batch-delay-ms", 30_000])


def test_metrics_pass_promtool_and_exist_from_start(metered, model_dir):
    _, metrics_addr = metered
    text = scrape(metrics_addr)
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: install Debian's prometheus package (.ci/run does)"
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    lines = set(text.splitlines())
    for series in from_start(model_dir.name):
        assert series in lines, f"missing at start-up: {series}"
    assert "siglip_ready 1" in lines
    for prefix in PRESENT:
        assert any(line.startswith(prefix) for line in lines), f"missing: {prefix}"


def documented_metric_names() -> set[str]:
    """The siglip_* metrics the table in docs/metrics.md documents."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text()
    table = doc.split("| metric | type | what |", 1)[1].split("\n\n", 1)[0]
    return set(re.findall(r"`(siglip_[a-z_]+)", table))


def test_the_documented_metric_table_is_what_the_server_exports(metered):
    _, metrics_addr = metered
    exported = set(re.findall(r"^# TYPE (siglip_[a-z_]+) ", scrape(metrics_addr), re.MULTILINE))
    documented = documented_metric_names()
    # Exported only where there is a GPU (NVML), documented for it.
    cuda_only = {"siglip_cuda_memory_used_bytes"}
    # Labelled by the caller's name, which only a call tells: exported once one has come. This
    # server may have had none yet (the Rust tests check the series, tests/grpc/{auth,tls}.rs).
    by_caller = {"siglip_calls_by_caller_total"}
    assert documented - cuda_only - by_caller == exported - by_caller, (
        f"in docs/metrics.md only: {sorted(documented - cuda_only - by_caller - exported)}; "
        f"exported only: {sorted(exported - documented)}"
    )


def test_real_prometheus_sees_traffic(metered, stubs, assets, labels, tmp_path):
    grpc_addr, metrics_addr = metered
    prometheus = shutil.which("prometheus")
    assert prometheus, "prometheus not found: install Debian's prometheus package (.ci/run does)"
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n"
        f"scrape_configs:\n  - job_name: siglip\n    static_configs:\n      - targets: ['{metrics_addr}']\n"
    )
    port = free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    server = subprocess.Popen(
        [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    try:
        pb2, pb2_grpc = stubs
        photo = (assets / "images" / "chelsea_progressive.jpg").read_bytes()
        with grpc.insecure_channel(grpc_addr) as channel:
            siglip = pb2_grpc.SiglipStub(channel)
            for _ in range(5):
                siglip.Classify(pb2.ClassifyRequest(image=pb2.Image(encoded=photo), texts=labels), timeout=30)
            with pytest.raises(grpc.RpcError) as bad:
                siglip.Classify(pb2.ClassifyRequest(image=pb2.Image(encoded=b"junk"), texts=labels), timeout=30)
            assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        def query(expr: str) -> float | None:
            url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    result = json.load(response)["data"]["result"]
            except OSError:
                return None
            return float(result[0]["value"][1]) if result else None

        # Summed over the `model` label: calls refused before naming a model have model="".
        expectations = {
            'sum(siglip_grpc_requests_total{method="Classify",code="OK"})': 5,
            'sum(siglip_grpc_requests_total{method="Classify",code="INVALID_ARGUMENT"})': 1,
            "sum(siglip_images_processed_total)": 5,
            'sum(siglip_grpc_request_duration_seconds_count{method="Classify"})': 6,
            "siglip_ready": 1,
        }
        deadline = time.monotonic() + 60
        seen: dict[str, float | None] = {}
        while time.monotonic() < deadline:
            seen = {expr: query(expr) for expr in expectations}
            if all(value is not None and value >= want for want, value in zip(expectations.values(), seen.values(), strict=True)):
                break
            time.sleep(0.5)
        for expr, want in expectations.items():
            assert seen[expr] is not None and seen[expr] >= want, f"{expr}: Prometheus sees {seen[expr]}, want ≥ {want}"
        # Bounded cardinality, after that traffic: no label carries a text or a peer address.
        text = scrape(metrics_addr)
        leaked = [label for label in labels if label in text]
        assert not leaked and "127.0.0.1" not in text, leaked
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def test_a_call_the_client_abandons_counts_as_cancelled(holding, stubs, assets, labels, model_dir):
    grpc_addr, metrics_addr = holding
    pb2, pb2_grpc = stubs
    photo = (assets / "images" / "chelsea_progressive.jpg").read_bytes()
    with grpc.insecure_channel(grpc_addr) as channel:
        siglip = pb2_grpc.SiglipStub(channel)
        pending = siglip.Classify.future(
            pb2.ClassifyRequest(image=pb2.Image(encoded=photo), texts=["a cancelled call"]), timeout=60)
        # The call waits in the batcher (--max-batch-delay-ms): cancel it while it is handled.
        wait_for_series(metrics_addr, ["siglip_inflight_requests 1"])
        pending.cancel()
    wait_for_series(metrics_addr, [
        f'siglip_grpc_requests_total{{method="Classify",code="CANCELLED",model="{model_dir.name}"}} 1',
        "siglip_inflight_requests 0",
    ])
