"""TLS, mutual TLS and bearer tokens, as a grpcio client sees them, with real handshakes.

Two servers: one with TLS only (--tls-cert/--tls-key), one with mutual TLS and tokens
(--tls-client-ca, --auth-tokens-file). Covered: a client trusting the right CA is served; a plaintext
client or one trusting another CA fails; without a client certificate, with one from another CA or
with an expired one the handshake is refused; a missing or wrong token is UNAUTHENTICATED and the
message never echoes a token; health stays open without a token.

The certificates come from `pki.py` (the openssl CLI).
"""

import secrets
from pathlib import Path

import grpc
import pytest
from conftest import run_server
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pki import CLIENT_EXT, SERVER_EXT, make_ca, make_leaf

TIMEOUT_S = 5
IMAGE = "images/astronaut_384.png"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """name -> (certificate, key) PEM paths."""
    folder = tmp_path_factory.mktemp("pki")
    ca, other_ca = make_ca(folder, "test-ca"), make_ca(folder, "other-ca")
    return {
        "ca": ca,
        "other-ca": other_ca,
        "server": make_leaf(folder, "localhost", ca, SERVER_EXT),
        "client": make_leaf(folder, "python-client", ca, CLIENT_EXT),
        "other-client": make_leaf(folder, "stranger", other_ca, CLIENT_EXT),
        "expired-client": make_leaf(folder, "expired-client", ca, CLIENT_EXT, ("200101000000Z", "200201000000Z")),
    }


@pytest.fixture(scope="module")
def token() -> str:
    return secrets.token_urlsafe(32)


def credentials(pki, ca: str = "ca", client: str | None = None) -> grpc.ChannelCredentials:
    """Trusts ``ca``; presents the certificate ``client`` when given."""
    chain, key = (pki[client][0].read_bytes(), pki[client][1].read_bytes()) if client else (None, None)
    return grpc.ssl_channel_credentials(root_certificates=pki[ca][0].read_bytes(), private_key=key, certificate_chain=chain)


@pytest.fixture(scope="module")
def tls_server(server_bin, model_dir, pki, tmp_path_factory):
    flags = ["--tls-cert", pki["server"][0], "--tls-key", pki["server"][1]]
    creds = credentials(pki)
    yield from run_server(server_bin, model_dir, tmp_path_factory.mktemp("tls"), flags,
                          lambda addr: grpc.secure_channel(addr, creds))


@pytest.fixture(scope="module")
def mtls_server(server_bin, model_dir, pki, token, tmp_path_factory):
    folder = tmp_path_factory.mktemp("mtls")
    tokens = folder / "tokens"
    tokens.write_text(f"# the python tests\n{token} python\n")
    flags = ["--tls-cert", pki["server"][0], "--tls-key", pki["server"][1], "--tls-client-ca", pki["ca"][0],
             "--auth-tokens-file", tokens]
    creds = credentials(pki, client="client")
    yield from run_server(server_bin, model_dir, folder, flags, lambda addr: grpc.secure_channel(addr, creds))


@pytest.fixture(scope="module")
def classify(stubs, assets, labels):
    """classify(channel, metadata=None): top label of a Classify call."""
    pb2, pb2_grpc = stubs
    request = pb2.ClassifyRequest(image=pb2.Image(encoded=(assets / IMAGE).read_bytes()), texts=labels)

    def call(channel: grpc.Channel, metadata=None) -> str:
        scores = pb2_grpc.SiglipStub(channel).Classify(request, timeout=TIMEOUT_S, metadata=metadata).scores
        assert len(scores) == len(labels)
        return scores[0].label

    return call


def refused(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def test_tls_trusted_ca_is_served(tls_server, pki, classify, labels):
    with grpc.secure_channel(tls_server, credentials(pki)) as channel:
        assert classify(channel) in labels


def test_tls_refuses_plaintext(tls_server, classify):
    with grpc.insecure_channel(tls_server) as channel:
        assert refused(lambda: classify(channel)).code() == grpc.StatusCode.UNAVAILABLE


def test_tls_client_trusting_other_ca_fails(tls_server, pki, classify):
    # The client cannot verify the server: its handshake fails before any call is sent.
    with grpc.secure_channel(tls_server, credentials(pki, ca="other-ca")) as channel:
        assert refused(lambda: classify(channel)).code() == grpc.StatusCode.UNAVAILABLE


def test_mtls_with_token_is_served(mtls_server, pki, token, classify, labels):
    with grpc.secure_channel(mtls_server, credentials(pki, client="client")) as channel:
        assert classify(channel, bearer(token)) in labels


@pytest.mark.parametrize("sent", ["none", "wrong"])
def test_mtls_without_right_token_is_unauthenticated(mtls_server, pki, token, classify, sent):
    # A valid client certificate alone is not enough when tokens are on.
    wrong = secrets.token_urlsafe(32)
    metadata = bearer(wrong) if sent == "wrong" else None
    with grpc.secure_channel(mtls_server, credentials(pki, client="client")) as channel:
        err = refused(lambda: classify(channel, metadata))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    # Neither the configured token nor the one the client sent may be echoed back.
    assert token not in (err.details() or "") and wrong not in (err.details() or "")


def test_mtls_health_is_open_without_token(mtls_server, pki):
    # Probes (kubelet, load balancers) carry no token.
    with grpc.secure_channel(mtls_server, credentials(pki, client="client")) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("client", [None, "other-client", "expired-client"])
def test_mtls_refuses_bad_client_certificate(mtls_server, pki, token, classify, client):
    # The server refuses the handshake itself: even a valid token cannot get through.
    with grpc.secure_channel(mtls_server, credentials(pki, client=client)) as channel:
        assert refused(lambda: classify(channel, bearer(token))).code() == grpc.StatusCode.UNAVAILABLE
