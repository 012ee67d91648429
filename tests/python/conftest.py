"""Fixtures: a real siglip-serve process on an ephemeral port, and stubs generated from the proto.

Environment (set by `make test`): SIGLIP_TEST_MODEL_DIR, SIGLIP_TEST_ASSETS; optional
SIGLIP_SERVE_BIN (default target/release/siglip-serve) and SIGLIP_TEST_THREADS (the servers'
`--threads`; unset, the server's default: one per core).
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
STARTUP_TIMEOUT_S = 60


def _env_dir(name: str, example: str) -> Path:
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: export it as `make test` does, e.g. {name}=$PWD/{example}", pytrace=False)
    path = Path(value)
    if not path.is_dir():
        pytest.fail(f"{name}={value} is not a directory", pytrace=False)
    return path


@pytest.fixture(scope="session")
def model_dir() -> Path:
    return _env_dir("SIGLIP_TEST_MODEL_DIR", "build/models/tiny")


@pytest.fixture(scope="session")
def assets() -> Path:
    return _env_dir("SIGLIP_TEST_ASSETS", "build/assets")


@pytest.fixture(scope="session")
def server_bin() -> Path:
    path = Path(os.environ.get("SIGLIP_SERVE_BIN", REPO / "target/release/siglip-serve"))
    if not os.access(path, os.X_OK):
        pytest.fail(f"server binary {path} is missing: build it (make build) or set SIGLIP_SERVE_BIN", pytrace=False)
    return path


@pytest.fixture(scope="session")
def manifest(model_dir: Path) -> dict:
    return json.loads((model_dir / "manifest.json").read_text())


@pytest.fixture(scope="session")
def labels(assets: Path) -> list[str]:
    return json.loads((assets / "labels.json").read_text())


@pytest.fixture(scope="session")
def stubs():
    """(pb2, pb2_grpc), generated from proto/siglip/v1/siglip.proto into a temporary directory."""
    sys.path.insert(0, str(EXAMPLES))
    from siglip_stubs import pb2, pb2_grpc

    return pb2, pb2_grpc


def _wait_for_port(proc: subprocess.Popen, stdout: Path, stderr: Path) -> int:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        match = re.search(r"gRPC listening on \S+:(\d+)", stdout.read_text())
        if match:
            return int(match.group(1))
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"server did not report its port (exit {proc.poll()}):\n{stderr.read_text()}", pytrace=False)


def _wait_for_serving(channel: grpc.Channel, stderr: Path) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            pass
        time.sleep(0.1)
    pytest.fail(f"server never reported SERVING:\n{stderr.read_text()}", pytrace=False)


def serve_command(server_bin: Path, model_dir: Path, flags=()) -> list[str]:
    """`siglip-serve serve` on ephemeral loopback ports with `flags`: in float32 (the tests compare RPCs
    and the CLI with each other at 1e-5) and, unless `flags` say otherwise, on the CPU (the tests'
    premises about what is slow, a large decode against a forward pass, are the CPU's, and `auto`
    would pick a GPU wherever there is one) with SIGLIP_TEST_THREADS libtorch threads when that is
    set. `model_dir` is a model directory (`--model-dir`) or a directory of them (`--model-repository`)."""
    flags = [str(flag) for flag in flags]
    source = "--model-dir" if (Path(model_dir) / "manifest.json").exists() else "--model-repository"
    cmd = [str(server_bin), "serve", source, str(model_dir), "--grpc-addr", "127.0.0.1:0",
           "--metrics-addr", "127.0.0.1:0", "--dtype", "float32"]
    if "--device" not in flags:
        cmd += ["--device", "cpu"]
    threads = os.environ.get("SIGLIP_TEST_THREADS")
    if threads and "--threads" not in flags:
        cmd += ["--threads", threads]
    return cmd + flags


def run_server(server_bin: Path, model_dir: Path, logs: Path, flags=(), open_channel=grpc.insecure_channel):
    """Yields the address (host:port) of a ready server started with `flags`, whose health is asked
    over `open_channel(addr)`; at the end it must stop cleanly on SIGTERM."""
    stdout, stderr = logs / "stdout.log", logs / "stderr.log"
    cmd = serve_command(server_bin, model_dir, flags)
    with stdout.open("wb") as out, stderr.open("wb") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
    addr = f"127.0.0.1:{_wait_for_port(proc, stdout, stderr)}"
    with open_channel(addr) as channel:
        _wait_for_serving(channel, stderr)
    yield addr
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("server did not stop within 30 s of SIGTERM", pytrace=False)
    assert code == 0, f"server exited with {code} after SIGTERM:\n{stderr.read_text()}"


@pytest.fixture(scope="session")
def server(server_bin: Path, model_dir: Path, tmp_path_factory) -> str:
    """Address (host:port) of a ready server; at the end it must stop cleanly on SIGTERM."""
    yield from run_server(server_bin, model_dir, tmp_path_factory.mktemp("server"))


@pytest.fixture(scope="session")
def channel(server: str):
    with grpc.insecure_channel(server) as channel:
        yield channel


@pytest.fixture(scope="session")
def siglip(stubs, channel):
    return stubs[1].SiglipStub(channel)
