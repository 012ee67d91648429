"""Certificates for the TLS tests, made with the openssl CLI (EC P-256 keys: quick to generate)."""

import subprocess
from pathlib import Path

EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

# `openssl ca` is the only way in OpenSSL 3.0 to give a certificate dates in the past (x509 -req
# starts at "now"); this is the least configuration it accepts.
CA_CONFIG = """\
[ca]
default_ca = test_ca
[test_ca]
database = {dir}/index.txt
new_certs_dir = {dir}
serial = {dir}/serial
default_md = sha256
policy = anything
unique_subject = no
[anything]
commonName = supplied
"""
LEAF_EXT = "basicConstraints = critical,CA:false\nkeyUsage = critical,digitalSignature\n"
SERVER_EXT = LEAF_EXT + "extendedKeyUsage = serverAuth\nsubjectAltName = DNS:localhost,IP:127.0.0.1\n"
CLIENT_EXT = LEAF_EXT + "extendedKeyUsage = clientAuth\n"


def openssl(*args) -> None:
    result = subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True)
    assert result.returncode == 0, f"openssl {' '.join(map(str, args))}:\n{result.stderr}"


def make_ca(folder: Path, name: str) -> tuple[Path, Path]:
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    openssl("req", "-x509", *EC_KEY, "-keyout", key, "-out", cert, "-days", "30", "-subj", f"/CN={name}",
            "-addext", "basicConstraints=critical,CA:true", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return cert, key


def make_leaf(folder: Path, name: str, ca: tuple[Path, Path], extensions: str, dates: tuple[str, str] | None = None):
    """(certificate, key) signed by ``ca``; ``dates`` (start, end as YYMMDDHHMMSSZ) default to a valid month."""
    cert, key, csr = folder / f"{name}.pem", folder / f"{name}.key", folder / f"{name}.csr"
    openssl("req", "-new", *EC_KEY, "-keyout", key, "-out", csr, "-subj", f"/CN={name}")
    ext = folder / f"{name}.ext"
    ext.write_text(extensions)
    if dates is None:
        openssl("x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial", "-days", "30",
                "-sha256", "-extfile", ext, "-out", cert)
    else:
        db = folder / f"{name}.db"
        db.mkdir()
        (db / "index.txt").write_text("")
        (db / "serial").write_text("1000\n")
        config = db / "ca.cnf"
        config.write_text(CA_CONFIG.format(dir=db))
        openssl("ca", "-batch", "-config", config, "-cert", ca[0], "-keyfile", ca[1], "-in", csr, "-out", cert,
                "-startdate", dates[0], "-enddate", dates[1], "-extfile", ext, "-notext")
    return cert, key
