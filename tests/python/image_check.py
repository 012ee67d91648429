"""The container image run as an operator runs it (`make image-test`; not part of `make test`,
which does not collect this file).

Every container here runs as the deployment in deploy/base runs the server: the image's own user,
a read-only root filesystem with a tmpfs on /tmp (the deployment's emptyDir), every capability
dropped, no privilege escalation, the model directory mounted read-only at /models, and its two
ports published on loopback. Each check compares with, or talks to, what the README promises.

Environment (set by `make image-test`): SIGLIP_TEST_IMAGE (the image), SIGLIP_PODMAN (the podman
command line) and SIGLIP_PODMAN_RUN_FLAGS (what every `podman run` needs on this machine, from
deploy/image/lib.sh), SIGLIP_IMAGE_REPORT (where the figures for the last line go),
SIGLIP_TEST_AOTI_MODEL_DIR (a model with a compiled package), and what conftest.py reads (the
model, the assets, the host's server binary for the comparisons).
"""

import json
import os
import shlex
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import run_server
from pki import SERVER_EXT, make_ca, make_leaf

PHOTOS = ["images/astronaut_384.png", "images/chelsea_progressive.jpg", "images/coffee_2000x1500.jpg"]
# The deployment's terminationGracePeriodSeconds, and the server's drain inside it.
GRACE_S = 30
SHUTDOWN_GRACE_S = 20
START_TIMEOUT_S = 120
# The user the Dockerfile creates and runs as.
USER = "10001:10001"
TLS_DIR = "/etc/siglip/tls"
REPORT: dict = {}


def from_env(name: str) -> list[str]:
    if name not in os.environ:
        pytest.fail(f"{name} is not set: run `make image-test`", pytrace=False)
    return shlex.split(os.environ[name])


def podman_argv() -> list[str]:
    return from_env("SIGLIP_PODMAN")


def run_flags() -> list[str]:
    return from_env("SIGLIP_PODMAN_RUN_FLAGS")


def podman(*args, check=True, timeout=120) -> subprocess.CompletedProcess:
    result = subprocess.run([*podman_argv(), *map(str, args)], capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, f"podman {' '.join(map(str, args))} exited {result.returncode}:\n{result.stderr}"
    return result


@pytest.fixture(scope="session")
def image() -> str:
    name = os.environ.get("SIGLIP_TEST_IMAGE")
    if not name:
        pytest.fail("SIGLIP_TEST_IMAGE is not set: run `make image-test`", pytrace=False)
    assert podman("image", "exists", name, check=False).returncode == 0, f"no image {name}: run `make image`"
    REPORT["size_mb"] = round(int(podman("image", "inspect", "--format", "{{.Size}}", name).stdout) / 1e6)
    yield name
    path = os.environ.get("SIGLIP_IMAGE_REPORT")
    if path:
        Path(path).write_text(json.dumps(REPORT))


class Container:
    """One detached container of the image, hardened as the deployment runs it; a context manager
    that removes it."""

    def __init__(self, image: str, model_dir: Path, env: dict[str, str] | None = None, mounts=()):
        self.name = f"siglip-image-test-{uuid.uuid4().hex[:8]}"
        flags = ["--name", self.name, "--detach", "--read-only", "--read-only-tmpfs=false",
                 "--tmpfs", "/tmp:rw,size=1g,mode=1777", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
                 *run_flags(),
                 "--volume", f"{model_dir}:/models:ro", "--publish", "127.0.0.1::50051", "--publish", "127.0.0.1::9090"]
        for source, target in mounts:
            flags += ["--volume", f"{source}:{target}:ro"]
        # The deployment's environment: HOME on the tmpfs (read-only root); float32, as the host
        # server the results are compared with.
        for key, value in {"HOME": "/tmp", "SIGLIP_DTYPE": "float32", **(env or {})}.items():
            flags += ["--env", f"{key}={value}"]
        self.started = time.monotonic()
        podman("run", *flags, image)
        try:
            self.addr = self.port(50051)
            self.metrics_url = f"http://{self.port(9090)}/metrics"
        except BaseException:
            self.remove()
            raise

    def __enter__(self) -> "Container":
        return self

    def __exit__(self, *_) -> None:
        self.remove()

    def port(self, inner: int) -> str:
        return podman("port", self.name, f"{inner}/tcp").stdout.strip()

    def wait_healthy(self) -> float:
        """Seconds from `podman run` to the image's HEALTHCHECK passing (the server SERVING)."""
        while time.monotonic() - self.started < START_TIMEOUT_S:
            if podman("healthcheck", "run", self.name, check=False).returncode == 0:
                return time.monotonic() - self.started
            state = podman("inspect", "--format", "{{.State.Status}}", self.name).stdout.strip()
            assert state == "running", f"the container is {state}:\n{self.logs()}"
            time.sleep(0.2)
        pytest.fail(f"the HEALTHCHECK never passed in {START_TIMEOUT_S} s:\n{self.logs()}", pytrace=False)

    def exec(self, *command) -> subprocess.CompletedProcess:
        return podman("exec", self.name, *command, check=False)

    def logs(self) -> str:
        result = podman("logs", self.name, check=False)
        return result.stdout + result.stderr

    def metrics(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as response:
            assert response.status == 200
            return response.read().decode()

    def stop(self) -> tuple[int, float]:
        """SIGTERM (`podman stop`), SIGKILL after GRACE_S as the kubelet would: (exit code, seconds)."""
        start = time.monotonic()
        podman("stop", "--time", GRACE_S, self.name, timeout=GRACE_S + 30)
        took = time.monotonic() - start
        return int(podman("inspect", "--format", "{{.State.ExitCode}}", self.name).stdout), took

    def remove(self) -> None:
        podman("rm", "--force", self.name, check=False)


@pytest.fixture(scope="module")
def container(image, model_dir):
    with Container(image, model_dir) as box:
        REPORT["start_s"] = round(box.wait_healthy(), 2)
        yield box
        code, _ = box.stop()
        assert code == 0, f"the container exited {code} on SIGTERM:\n{box.logs()}"


@pytest.fixture(scope="module")
def host(server_bin, model_dir, tmp_path_factory):
    """The same model served by the host's binary: what the container must answer."""
    yield from run_server(server_bin, model_dir, tmp_path_factory.mktemp("host"))


@pytest.fixture(scope="module")
def stubs_of(stubs):
    pb2, pb2_grpc = stubs

    def open_stub(addr: str, credentials=None):
        channel = grpc.secure_channel(addr, credentials) if credentials else grpc.insecure_channel(addr)
        return pb2_grpc.SiglipStub(channel)

    return open_stub


def inside(image: str, script: str) -> str:
    """What `script` prints in a throwaway container of the image (bash, the image's user)."""
    return podman("run", "--rm", "--no-healthcheck", *run_flags(), "--entrypoint", "/bin/bash", image, "-c",
                  script).stdout


def probabilities(response) -> dict[str, float]:
    return {score.label: score.probability for score in response.scores}


def test_the_image_is_lean_and_safe(image):
    inspected = json.loads(podman("image", "inspect", image).stdout)[0]
    config = inspected["Config"]
    assert config["User"] == USER, "the image runs as root"
    # podman keeps a HEALTHCHECK only in Docker's image format (`podman build --format docker`).
    assert inspected["Healthcheck"]["Test"] == ["CMD", "siglip-serve", "health"], "the HEALTHCHECK was lost"
    leaked = [var for var in config["Env"] if var.split("=")[0].startswith(("PIP_", "CARGO_", "RUSTUP_"))
              or any(word in var.split("=")[0] for word in ("TOKEN", "SECRET", "PASSWORD", "KEY"))]
    assert not leaked, f"build settings or secrets in the image's environment: {leaked}"
    history = podman("history", "--no-trunc", "--format", "{{.CreatedBy}}", image).stdout
    assert "pip.conf" not in history and "PIP_" not in history, "pip's settings are in the image's history"
    cpu = "SIGLIP_DEVICE=cpu" in config["Env"]
    # Inside: no toolchain, no Python, no build leftovers, no build secret (pip.conf; the CPU
    # image's Debian base has no CA bundle, so one there would be the build's; the server needs
    # neither).
    paths = "/src /opt/venv /root/.cache /usr/local/cargo /usr/local/rustup /etc/pip.conf"
    if cpu:
        paths += " /etc/ssl/certs/ca-certificates.crt"
    script = f"""
for tool in gcc cc g++ c++ ld rustc cargo python3 pip pip3 make; do command -v "$tool"; done
for path in {paths}; do [ -e "$path" ] && echo "$path"; done
exit 0
"""
    leftovers = inside(image, script).split()
    assert leftovers == [], f"in the runtime image: {leftovers}"
    # Every library resolves: on the CPU image, each one in /opt/libtorch; on the CUDA image, what
    # the binary loads (some of the CUDA wheels' libraries need the driver, InfiniBand or MPI, and
    # are only opened where those exist).
    checked = "/usr/local/bin/siglip-serve $(find /opt/libtorch -name '*.so*')" if cpu else "/usr/local/bin/siglip-serve"
    script = rf"""
find /opt/libtorch -name '*.so*' -printf '%P\n' | sort
for lib in {checked}; do
  ldd "$lib" | grep 'not found' | sed "s|^|$lib: |"
done
"""
    lines = inside(image, script).splitlines()
    missing = [line for line in lines if "not found" in line]
    assert not missing, f"libraries ldd cannot find: {missing}"
    libraries = set(lines)
    assert {"torch/lib/libtorch.so", "torch/lib/libtorch_cpu.so", "torch/lib/libc10.so"} <= libraries
    cuda = {lib for lib in libraries if lib.startswith("nvidia/") or "cuda" in lib}
    if cpu:
        assert cuda == {"nvidia/cu13/lib/libcudart.so.13", "nvidia/cu13/lib/libcupti.so.13"}, \
            f"CUDA libraries beyond the two libtorch_cpu.so needs: {sorted(cuda)}"
    else:
        assert "torch/lib/libtorch_cuda.so" in cuda, "the CUDA variant without libtorch_cuda.so"


def test_the_healthcheck_reports_serving_on_a_read_only_root_as_non_root(container):
    assert podman("healthcheck", "run", container.name, check=False).returncode == 0
    assert container.exec("id", "-u").stdout.strip() == USER.split(":")[0]
    refused = container.exec("touch", "/usr/local/bin/written")
    assert refused.returncode != 0 and "Read-only file system" in refused.stderr


def test_classify_equals_the_host_binary(container, host, stubs, stubs_of, assets, labels):
    pb2, _ = stubs
    inside, outside = stubs_of(container.addr), stubs_of(host)
    worst = 0.0
    for photo in PHOTOS:
        request = pb2.ClassifyRequest(image=pb2.Image(encoded=(assets / photo).read_bytes()), texts=labels)
        got, want = probabilities(inside.Classify(request, timeout=30)), probabilities(outside.Classify(request, timeout=30))
        assert got.keys() == want.keys() == set(labels)
        worst = max(worst, *(abs(got[label] - want[label]) for label in labels))
    REPORT["classify_max_diff"] = worst
    REPORT["classify_ok"] = int(worst <= 1e-6)
    assert worst <= 1e-6, f"the container's probabilities differ from the host's by {worst}"


def test_embed_image_equals_the_host_binary(container, host, stubs, stubs_of, assets):
    pb2, _ = stubs
    request = pb2.EmbedImageRequest(images=[pb2.Image(encoded=(assets / photo).read_bytes()) for photo in PHOTOS])
    got, want = (np.array([e.values for e in stub.EmbedImage(request, timeout=30).embeddings])
                 for stub in (stubs_of(container.addr), stubs_of(host)))
    assert got.shape == want.shape == (len(PHOTOS), got.shape[1])
    assert np.abs(got - want).max() <= 1e-6


def test_stream_equals_the_host_binary(container, host, stubs, stubs_of, assets, labels):
    pb2, _ = stubs
    config = pb2.StreamConfig(texts=labels, mode=pb2.DELIVERY_MODE_EVERY_FRAME)

    def frames():
        yield pb2.StreamRequest(config=config)
        for frame_id, photo in enumerate(PHOTOS):
            image = pb2.Image(encoded=(assets / photo).read_bytes())
            yield pb2.StreamRequest(frame=pb2.Frame(frame_id=frame_id, image=image))

    got, want = ({r.frame_id: probabilities(r) for r in stub.Stream(frames(), timeout=60)}
                 for stub in (stubs_of(container.addr), stubs_of(host)))
    assert got.keys() == want.keys() == set(range(len(PHOTOS)))
    assert max(abs(got[f][label] - want[f][label]) for f in got for label in labels) <= 1e-6


def test_metrics_are_scraped(container, stubs, stubs_of, assets, labels):
    pb2, _ = stubs
    request = pb2.ClassifyRequest(image=pb2.Image(encoded=(assets / PHOTOS[0]).read_bytes()), texts=labels)
    stubs_of(container.addr).Classify(request, timeout=30)
    counted = sum(float(line.rsplit(" ", 1)[1]) for line in container.metrics().splitlines()
                  if line.startswith("siglip_grpc_requests_total{") and 'method="Classify"' in line
                  and 'code="OK"' in line)
    assert counted >= 1, "no Classify counted on /metrics"

def test_a_compiled_package_loads_and_answers_as_on_the_host(image, server_bin, stubs, stubs_of, assets, labels,
                                                            tmp_path):
    """A model with an AOTInductor package (`siglip-export compile`): the package's library needs
    libtorch.so, the image's own (libtorch_cpu.so alone), and is unpacked under /tmp, the only
    writable place."""
    pb2, _ = stubs
    model = Path(os.environ["SIGLIP_TEST_AOTI_MODEL_DIR"])
    request = pb2.ClassifyRequest(image=pb2.Image(encoded=(assets / PHOTOS[1]).read_bytes()), texts=labels)
    # The package takes batches of at most 8 (`make`'s `compile --max-batch 8`).
    with Container(image, model, env={"SIGLIP_BACKEND": "aoti", "SIGLIP_MAX_BATCH_SIZE": "8"}) as box:
        box.wait_healthy()
        got = probabilities(stubs_of(box.addr).Classify(request, timeout=30))
    host = run_server(server_bin, model, tmp_path, ["--backend", "aoti", "--max-batch-size", "8"])
    try:
        want = probabilities(stubs_of(next(host)).Classify(request, timeout=30))
    finally:
        next(host, None)  # SIGTERM, and its exit checked
    assert max(abs(got[label] - want[label]) for label in labels) <= 1e-6


def inflight(box: Container) -> float:
    line = next(line for line in box.metrics().splitlines() if line.startswith("siglip_inflight_requests "))
    return float(line.split()[1])


def test_sigterm_drains_a_call_in_flight(image, model_dir, stubs, stubs_of, assets, labels):
    """SIGTERM while calls are in flight: every call is answered, and the server exits 0 inside the
    grace period (`podman stop` would SIGKILL it at GRACE_S, as the kubelet would)."""
    pb2, _ = stubs
    # Batches wait 3 s for company, so that the calls are still in flight when SIGTERM comes.
    env = {"SIGLIP_MAX_BATCH_SIZE": "64", "SIGLIP_MAX_BATCH_DELAY_MS": "3000",
           "SIGLIP_SHUTDOWN_GRACE_SECONDS": str(SHUTDOWN_GRACE_S)}
    with Container(image, model_dir, env=env) as box:
        box.wait_healthy()
        stub = stubs_of(box.addr)
        request = pb2.ClassifyRequest(image=pb2.Image(encoded=(assets / PHOTOS[1]).read_bytes()), texts=labels)
        calls = [stub.Classify.future(request, timeout=60) for _ in range(4)]
        deadline = time.monotonic() + 30
        while inflight(box) < 4:
            assert time.monotonic() < deadline, "the four calls never arrived"
            time.sleep(0.02)
        assert not any(call.done() for call in calls), "the calls were answered before SIGTERM"
        code, took = box.stop()
        answered = [call.result() for call in calls]
        REPORT["drain_s"] = round(took, 2)
        REPORT["drain_ok"] = int(code == 0 and took < GRACE_S and all(r.scores for r in answered))
        assert code == 0, f"exit {code} after SIGTERM:\n{box.logs()}"
        assert took < GRACE_S, f"took {took:.1f} s to stop: killed, not drained"
        assert all(len(r.scores) == len(labels) for r in answered)


def test_tls_with_mounted_certificates(image, model_dir, stubs, stubs_of, assets, labels, tmp_path):
    """The tls component's layout: a Secret's tls.crt, tls.key and ca.crt mounted read-only at
    /etc/siglip/tls, the server and the HEALTHCHECK's client pointed at them by environment."""
    pb2, _ = stubs
    ca = make_ca(tmp_path, "image-test-ca")
    cert, key = make_leaf(tmp_path, "localhost", ca, SERVER_EXT)
    secret = tmp_path / "secret"
    secret.mkdir()
    for name, source in (("tls.crt", cert), ("tls.key", key), ("ca.crt", ca[0])):
        (secret / name).write_bytes(source.read_bytes())
        # A Secret volume's default mode: readable by the container's user.
        (secret / name).chmod(0o644)
    env = {"SIGLIP_TLS_CERT": f"{TLS_DIR}/tls.crt", "SIGLIP_TLS_KEY": f"{TLS_DIR}/tls.key",
           "SIGLIP_HEALTH_ADDR": "https://127.0.0.1:50051", "SIGLIP_CLIENT_TLS_CA": f"{TLS_DIR}/ca.crt",
           "SIGLIP_CLIENT_TLS_SERVER_NAME": "localhost"}
    with Container(image, model_dir, mounts=[(secret, TLS_DIR)], env=env) as box:
        box.wait_healthy()
        request = pb2.ClassifyRequest(image=pb2.Image(encoded=(assets / PHOTOS[0]).read_bytes()), texts=labels)
        trusted = grpc.ssl_channel_credentials(root_certificates=ca[0].read_bytes())
        answer = stubs_of(box.addr, trusted).Classify(request, timeout=30)
        assert len(answer.scores) == len(labels)
        with pytest.raises(grpc.RpcError) as plaintext:
            stubs_of(box.addr).Classify(request, timeout=10)
        assert plaintext.value.code() == grpc.StatusCode.UNAVAILABLE
        REPORT["tls_ok"] = 1
        code, _ = box.stop()
        assert code == 0, box.logs()
