"""Transport security: gRPC over TLS, optionally requiring client certificates, with the
certificate files re-read when they change.

cert-manager (or an operator) replaces the files in place when it renews a certificate; a
gateway that read them once would serve the old certificate until it expires. gRPC asks
``CertificateReloader`` for the current configuration at every new TLS handshake, so a
rotation reaches every new connection without a restart, and existing connections keep the
certificate they were set up with until ``max_connection_age`` retires them.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from shellgate.store import ConfigurationError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files: the server's certificate chain and key, and the CA bundle client
    certificates must chain to (None: no client certificate is asked for)."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def paths(self) -> tuple[Path, ...]:
        return (self.cert, self.key) + ((self.client_ca,) if self.client_ca else ())


FileStamp = tuple[tuple[int, int, int], ...]


class CertificateReloader:
    """The certificate-configuration fetcher gRPC calls before each TLS handshake.

    It stats the files (cheap) and re-reads them only when one changed. A change that does
    not load, or a certificate that does not match its key (the two files are written one
    after the other, so a handshake can fall between the writes), keeps the configuration
    in use and is retried at the next handshake: a rotation can never take the listener down.
    gRPC calls this from its own threads; it only touches files and its own fields.
    """

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self._failed_stamp: FileStamp | None = None
        try:
            self._stamp = self._current_stamp()
            self.initial = self._load()
        except (OSError, ValueError) as exc:
            raise ConfigurationError(
                f"TLS files do not load (--tls-cert, --tls-key, --tls-client-ca): {exc}"
            ) from None
        self.reloads = 0

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        try:
            stamp = self._current_stamp()
        except OSError:
            return None  # a file is being replaced; the next handshake looks again
        if stamp == self._stamp or stamp == self._failed_stamp:
            return None
        try:
            configuration = self._load()
        except (OSError, ValueError) as exc:
            self._failed_stamp = stamp
            log.warning("changed TLS files do not load, still serving the previous ones: %s", exc)
            return None
        self._stamp = stamp
        self.reloads += 1
        log.info("TLS certificate files changed; new connections use the new certificate")
        return configuration

    def _current_stamp(self) -> FileStamp:
        stats = [os.stat(path) for path in self.files.paths()]  # follows Secret-mount symlinks
        return tuple((s.st_ino, s.st_mtime_ns, s.st_size) for s in stats)

    def _load(self) -> grpc.ServerCertificateConfiguration:
        chain = self.files.cert.read_bytes()
        key = self.files.key.read_bytes()
        _check_pair(chain, key)
        client_ca = None
        if self.files.client_ca is not None:
            client_ca = self.files.client_ca.read_bytes()
            x509.load_pem_x509_certificates(client_ca)  # raises ValueError when it holds none
        return grpc.ssl_server_certificate_configuration(
            [(key, chain)], root_certificates=client_ca
        )


def _check_pair(chain: bytes, key: bytes) -> None:
    """Raise ValueError unless the first certificate of ``chain`` belongs to ``key``."""
    leaf = x509.load_pem_x509_certificates(chain)[0]
    private = serialization.load_pem_private_key(key, password=None)
    leaf_public = leaf.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    key_public = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if leaf_public != key_public:
        raise ValueError("the certificate does not belong to the private key")


def server_credentials(reloader: CertificateReloader) -> grpc.ServerCredentials:
    """TLS credentials that re-read the files through ``reloader``; with a client CA, a
    client without a certificate that chains to it fails the handshake."""
    return grpc.dynamic_ssl_server_credentials(
        reloader.initial,
        reloader,
        require_client_authentication=reloader.files.client_ca is not None,
    )


def is_loopback_host(host: str) -> bool:
    """``localhost`` or a loopback IP literal; any other name may resolve off the machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
