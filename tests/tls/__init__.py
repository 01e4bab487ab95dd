"""A throwaway CA and a TLS-only redis-server for tests.

Everything is generated with ``openssl`` into a temporary directory at test
time; no key is ever committed.  The server certificate is for 127.0.0.1
(subjectAltName IP and DNS localhost), signed by the test CA.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import redis
from redis_server import RedisServer


@dataclass(frozen=True)
class CertBundle:
    ca_cert: Path
    server_cert: Path
    server_key: Path


def have_openssl() -> bool:
    return shutil.which("openssl") is not None


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_test_ca(directory: Path, name: str = "forkq-test") -> CertBundle:
    """A CA and a server certificate for 127.0.0.1 in ``directory`` (valid one day)."""
    directory.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
             "-days", "1", "-subj", f"/CN={name}-ca", cwd=directory)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=127.0.0.1", cwd=directory)
    (directory / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.crt", "-days", "1", "-extfile", "ext.cnf", cwd=directory)
    for key in ("ca.key", "server.key"):
        os.chmod(directory / key, 0o600)
    return CertBundle(ca_cert=directory / "ca.crt", server_cert=directory / "server.crt",
                  server_key=directory / "server.key")


class TlsRedisServer(RedisServer):
    """A redis-server that only speaks TLS (``--port 0 --tls-port N``), clients not authenticated."""

    def __init__(self, ca: CertBundle, extra: list[str] | None = None) -> None:
        super().__init__(extra=list(extra or []))
        self.ca = ca

    def listen_args(self) -> list[str]:
        return ["--port", "0", "--tls-port", str(self.port),
                "--tls-cert-file", str(self.ca.server_cert), "--tls-key-file", str(self.ca.server_key),
                "--tls-ca-cert-file", str(self.ca.ca_cert), "--tls-auth-clients", "no"]

    @property
    def url(self) -> str:
        return f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={self.ca.ca_cert}"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, ssl=True, ssl_ca_certs=str(self.ca.ca_cert))
