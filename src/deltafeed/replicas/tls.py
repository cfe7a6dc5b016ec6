"""TLS for replicas: a private CA and a server certificate for the replica's host, made with the
``openssl`` command, so clients that insist on ``https://``/``wss://`` can be pointed at a replica.

The CA is separate from the server certificate (a CA:TRUE root signing a CA:FALSE leaf with
``subjectAltName`` and ``serverAuth``), because strict verifiers (Python 3.13's default
``VERIFY_X509_STRICT``, browsers) refuse a self-signed leaf used as its own trust anchor. Clients
trust :attr:`Certificates.ca_file`: ``SSL_CERT_FILE`` for Python's default contexts,
``REQUESTS_CA_BUNDLE`` for requests, or deltafeed's own ``ca_file`` venue setting.
"""

from __future__ import annotations

import ipaddress
import shutil
import ssl
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from deltafeed.model import BadInput

DAYS = 30


@dataclass(frozen=True, slots=True)
class Certificates:
    """Where the replica's TLS files are: the CA clients trust, and the server's certificate and key."""

    ca_file: Path
    cert_file: Path
    key_file: Path


def _names(host: str) -> str:
    """The subjectAltName list for ``host``: always localhost and the loopback addresses too."""
    names = {"DNS:localhost", "IP:127.0.0.1", "IP:::1"}
    try:
        ipaddress.ip_address(host)
        names.add(f"IP:{host}")
    except ValueError:
        if host:
            names.add(f"DNS:{host}")
    return ",".join(sorted(names))


def write_certificates(directory: Path | None, host: str = "127.0.0.1") -> Certificates:
    """Make a CA and a server certificate for ``host`` in ``directory`` (a new temporary directory
    when None); :class:`BadInput` when ``openssl`` is missing or fails."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise BadInput("--tls needs the openssl command; install it (e.g. apt-get install openssl)")
    d = Path(tempfile.mkdtemp(prefix="deltafeed-tls-")) if directory is None else Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (d / n for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem"))
    ext = d / "server.ext"
    ext.write_text(
        f"subjectAltName={_names(host)}\nbasicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    )
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    steps = [
        [openssl, "req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca), "-days", str(DAYS),
         "-subj", "/CN=deltafeed replica CA", "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-addext", "subjectKeyIdentifier=hash"],
        [openssl, "req", "-new", *ec, "-keyout", str(key), "-out", str(csr), "-subj", "/CN=localhost"],
        [openssl, "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
         "-out", str(cert), "-days", str(DAYS), "-extfile", str(ext)],
    ]  # fmt: skip
    for cmd in steps:
        r = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if r.returncode != 0:
            err = (r.stderr.strip().splitlines() or ["no message"])[-1]
            raise BadInput(f"openssl could not make the replica's certificate in {d}: {err}; check --tls DIR")
    return Certificates(ca, cert, key)


def server_context(certs: Certificates) -> ssl.SSLContext:
    """A server-side TLS context serving ``certs``' certificate."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certs.cert_file, certs.key_file)
    return ctx


def client_context(ca_file: Path | str) -> ssl.SSLContext:
    """A client-side TLS context that trusts ``ca_file`` (a replica's CA)."""
    return ssl.create_default_context(cafile=str(ca_file))
