"""TLS for the gRPC port (optionally mTLS) and the sidecar HTTP port, reloaded in place.

Certificates are rotated often (cert-manager renews 90-day certificates after 60 days; some
shops use hours), so a restart per rotation is not an option. Both ports therefore pick up
new files for new connections while established ones keep theirs:

- gRPC: ``grpc.dynamic_ssl_server_credentials``. gRPC calls our fetcher before every TLS
  handshake, from its own threads, with the GIL held. The fetcher does no I/O: it hands over a
  configuration that :meth:`ServerTls.reload` already read and checked on the event loop, or
  None ("unchanged").
- Sidecar HTTP: aiohttp keeps the ``ssl.SSLContext`` it was given, so that context carries an
  SNI callback (OpenSSL calls it on every ClientHello, with or without SNI) that moves the
  handshake onto the newest context.

New files are read on SIGHUP (:meth:`ServerTls.request_reload`) and when a file changes
(polled every ``tls.reload_interval_seconds``, :mod:`lakehouse.server.file_watch`). A pair
that cannot be read, does not parse, or whose key does not match its certificate is refused
with an error log, and the previous pair stays in use: a botched rotation must not take the
port down.

The verified client identity of an mTLS call is in ``context.auth_context()``:
``x509_common_name``, ``x509_subject_alternative_name``, ``x509_subject`` and
``x509_pem_cert`` (lists of bytes); :mod:`lakehouse.server.auth` maps it to roles.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import re
import ssl
import threading
from pathlib import Path
from typing import Literal, NoReturn

import grpc

from lakehouse.config import TlsSettings
from lakehouse.server.file_watch import FileWatch

log = logging.getLogger(__name__)

_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\s+.+?\s+-----END CERTIFICATE-----", re.DOTALL
)

Mode = Literal["plaintext", "tls", "mtls"]


class CertificateError(OSError):
    """A certificate, key or CA file is missing, unreadable, or not usable.

    An ``OSError`` like ``ssl.SSLError``: at start-up it is reported as "cannot start", as a
    port that cannot be bound is.
    """


@dataclasses.dataclass(frozen=True)
class KeyPair:
    """A PEM certificate chain and its private key, checked to belong together.

    Attributes:
        cert_chain: The certificate chain as read (PEM).
        private_key: The private key as read (PEM).
        fingerprint: SHA-256 of the leaf certificate (DER), colon-separated upper-case hex as
            ``openssl x509 -noout -fingerprint -sha256`` prints it, so an operator can tell
            from the logs which certificate is served.
    """

    cert_chain: bytes
    private_key: bytes
    fingerprint: str


def load_key_pair(cert_file: Path, key_file: Path) -> KeyPair:
    """Reads a certificate chain and its private key, checking they parse and match.

    Checked here, with the ``ssl`` module, rather than left to gRPC: gRPC only finds out at
    the next handshake, from a C thread, with no way to keep serving the previous pair.

    Args:
        cert_file: PEM certificate chain, leaf first.
        key_file: Its unencrypted PEM private key.

    Returns:
        The bytes as read.

    Raises:
        CertificateError: A file is unreadable, does not parse, the key is encrypted or does
            not match the certificate, or a file changed while being read.
    """
    cert = _read(cert_file)
    key = _read(key_file)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _load_cert_chain(context, cert_file, key_file)
    # ssl reads paths, not bytes: read again, so what is returned is what was checked (a
    # rotation can land between two reads).
    if _read(cert_file) != cert or _read(key_file) != key:
        raise CertificateError(f"{cert_file} or {key_file} changed while being read")
    return KeyPair(cert, key, _fingerprint(cert, cert_file))


def load_ca_bundle(ca_file: Path) -> bytes:
    """Reads a PEM CA bundle, checking it holds at least one certificate.

    Raises:
        CertificateError: The file is unreadable or holds no PEM certificate.
    """
    bundle = _read(ca_file)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_verify_locations(cadata=bundle.decode("ascii"))
    except (ssl.SSLError, ValueError) as exc:  # ValueError: not ASCII, or no certificate
        raise CertificateError(f"{ca_file}: not a PEM CA bundle ({_reason(exc)})") from exc
    return bundle


def http_ssl_context(cert_file: Path, key_file: Path) -> tuple[ssl.SSLContext, str]:
    """A server-side context for the sidecar HTTP port (TLS 1.2 and later, no client certs).

    Returns:
        The context, and the SHA-256 fingerprint of the certificate it holds.

    Raises:
        CertificateError: The files are unreadable, do not parse, or do not match.
    """
    cert = _read(cert_file)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.set_alpn_protocols(["http/1.1"])
    _load_cert_chain(context, cert_file, key_file)
    if _read(cert_file) != cert:  # so the fingerprint logged is the one served
        raise CertificateError(f"{cert_file} changed while being read")
    return context, _fingerprint(cert, cert_file)


class ServerTls:
    """The process's TLS state: gRPC server credentials, the sidecar's context, reloading.

    Use: :meth:`load` before binding the ports (it raises on bad files), then
    :attr:`grpc_credentials` for ``add_secure_port`` and :attr:`http_ssl_context` for aiohttp,
    :meth:`start` to watch the files, :meth:`request_reload` on SIGHUP, :meth:`stop` at the
    end. With nothing configured every part is inert.
    """

    def __init__(self, settings: TlsSettings) -> None:
        self.settings = settings
        self._lock = threading.Lock()  # the fetcher runs on gRPC's threads
        self._pending: grpc.ServerCertificateConfiguration | None = None
        self._grpc_credentials: grpc.ServerCredentials | None = None
        self._http_initial: ssl.SSLContext | None = None
        self._http_current: ssl.SSLContext | None = None
        candidates = (
            settings.cert_file,
            settings.key_file,
            settings.client_ca_file,
            settings.http_cert_file,
            settings.http_key_file,
        )
        self._files = FileWatch(
            "TLS certificates",
            [path for path in candidates if path is not None],
            settings.reload_interval_seconds,
            self.reload,
        )

    @property
    def mode(self) -> Mode:
        """What the gRPC port speaks: ``plaintext``, ``tls`` or ``mtls``."""
        if not self.settings.grpc_enabled:
            return "plaintext"
        return "mtls" if self.settings.require_client_cert else "tls"

    @property
    def grpc_credentials(self) -> grpc.ServerCredentials | None:
        """Credentials for ``add_secure_port``; None for a plaintext gRPC port."""
        return self._grpc_credentials

    @property
    def http_ssl_context(self) -> ssl.SSLContext | None:
        """The context for the sidecar's ``TCPSite``; None for plain HTTP."""
        return self._http_initial

    def load(self) -> None:
        """Reads every configured file for the first time and builds the credentials.

        Raises:
            CertificateError: A file is missing, unreadable or invalid; the process should not
                start (there is no previous certificate to fall back on).
        """
        self._files.mark_loaded()
        s = self.settings
        if s.cert_file is not None and s.key_file is not None:
            initial = self._grpc_configuration(s.cert_file, s.key_file)
            self._grpc_credentials = grpc.dynamic_ssl_server_credentials(
                initial,
                # types-grpcio says the fetcher returns a configuration; gRPC documents (and
                # its C wrapper handles) None as "unchanged".
                self._fetch,  # type: ignore[arg-type]
                require_client_authentication=s.require_client_cert,
            )
        if s.http_cert_file is not None and s.http_key_file is not None:
            context, fingerprint = http_ssl_context(s.http_cert_file, s.http_key_file)
            context.sni_callback = self._select_http_context
            self._http_initial = self._http_current = context
            _log_loaded("http", s.http_cert_file, fingerprint)

    def start(self) -> None:
        """Starts watching the files (and serving :meth:`request_reload`) on the running loop."""
        self._files.start()

    async def stop(self) -> None:
        """Stops watching; established and new connections keep the current certificates."""
        await self._files.stop()

    def request_reload(self) -> None:
        """Re-reads the files soon, changed or not (the SIGHUP handler; safe on the loop)."""
        if not (self.settings.grpc_enabled or self.settings.http_enabled):
            log.info("reload requested; TLS is off, nothing to reload")
            return
        self._files.request()

    async def reload(self) -> bool:
        """Re-reads the files now; new connections get what they hold.

        gRPC and HTTP are reloaded independently: a bad gRPC pair does not hold back a good
        HTTP one. A part that fails keeps serving its previous certificate.

        Returns:
            True if every configured part was reloaded, False if one was refused (logged).
        """
        self._files.mark_loaded()
        s = self.settings
        ok = True
        if s.cert_file is not None and s.key_file is not None:
            try:
                configuration = await asyncio.to_thread(
                    self._grpc_configuration, s.cert_file, s.key_file
                )
            except CertificateError as exc:
                ok = _refused("grpc", exc)
            else:
                with self._lock:
                    self._pending = configuration
        if s.http_cert_file is not None and s.http_key_file is not None:
            try:
                context, fingerprint = await asyncio.to_thread(
                    http_ssl_context, s.http_cert_file, s.http_key_file
                )
            except CertificateError as exc:
                ok = _refused("http", exc)
            else:
                self._http_current = context
                _log_loaded("http", s.http_cert_file, fingerprint)
        return ok

    def _grpc_configuration(
        self, cert_file: Path, key_file: Path
    ) -> grpc.ServerCertificateConfiguration:
        pair = load_key_pair(cert_file, key_file)
        client_ca = None
        if self.settings.require_client_cert and self.settings.client_ca_file is not None:
            client_ca = load_ca_bundle(self.settings.client_ca_file)
        configuration = grpc.ssl_server_certificate_configuration(
            [(pair.private_key, pair.cert_chain)], root_certificates=client_ca
        )
        _log_loaded("grpc", cert_file, pair.fingerprint, mtls=client_ca is not None)
        return configuration

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """The per-handshake callback of gRPC (on its threads): a new configuration, once."""
        with self._lock:
            pending, self._pending = self._pending, None
        return pending

    def _select_http_context(
        self, connection: ssl.SSLObject | ssl.SSLSocket, _: str | None, initial: ssl.SSLContext
    ) -> None:
        """OpenSSL's ClientHello callback: moves the handshake onto the newest context."""
        current = self._http_current
        if current is not None and current is not initial:
            connection.context = current


def _log_loaded(port: str, cert_file: Path, fingerprint: str, mtls: bool = False) -> None:
    extra: dict[str, object] = {
        "port": port,
        "cert_file": str(cert_file),
        "fingerprint_sha256": fingerprint,
    }
    if port == "grpc":
        extra["client_certificates"] = "required" if mtls else "not requested"
    log.info("TLS certificate loaded", extra=extra)


def _refused(port: str, exc: CertificateError) -> Literal[False]:
    log.error(
        "TLS certificate reload refused; the previous certificate stays in use",
        extra={"port": port, "error": str(exc)},
    )
    return False


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CertificateError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _load_cert_chain(context: ssl.SSLContext, cert_file: Path, key_file: Path) -> None:
    try:
        context.load_cert_chain(cert_file, key_file, password=_no_password)
    except _EncryptedKeyError as exc:
        raise CertificateError(f"{key_file}: the private key is encrypted") from exc
    except FileNotFoundError as exc:
        raise CertificateError(f"cannot read {exc.filename}: {exc.strerror}") from exc
    except (ssl.SSLError, OSError) as exc:
        # OpenSSL's reasons ("PEM lib") do not say which file is wrong; the markers do.
        if not _PEM_CERTIFICATE.search(_read(cert_file)):
            raise CertificateError(f"{cert_file}: no PEM certificate") from exc
        if b"PRIVATE KEY-----" not in _read(key_file):
            raise CertificateError(f"{key_file}: no PEM private key") from exc
        raise CertificateError(
            f"{cert_file} and {key_file}: not a matching PEM certificate and key ({_reason(exc)})"
        ) from exc


class _EncryptedKeyError(Exception):
    """Raised from the password callback: without it OpenSSL would prompt on the terminal."""


def _no_password() -> NoReturn:
    raise _EncryptedKeyError


def _fingerprint(cert_chain: bytes, cert_file: Path) -> str:
    match = _PEM_CERTIFICATE.search(cert_chain)
    if match is None:
        raise CertificateError(f"{cert_file}: no PEM certificate")
    der = ssl.PEM_cert_to_DER_cert(match.group(0).decode("ascii"))
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


def _reason(exc: Exception) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason) if reason else str(exc)


def client_credentials(
    ca_file: Path | None, cert_file: Path | None, key_file: Path | None
) -> grpc.ChannelCredentials:
    """Channel credentials for a client of a TLS port (``lakehouse health``, tests, tools).

    Args:
        ca_file: PEM CA bundle the server must chain to; None trusts gRPC's bundled public CAs
            (or ``GRPC_DEFAULT_SSL_ROOTS_FILE_PATH``).
        cert_file: PEM client certificate, for a server that requires one.
        key_file: Its private key; given exactly when ``cert_file`` is.

    Raises:
        CertificateError: A file is unreadable or invalid.
    """
    ca = load_ca_bundle(ca_file) if ca_file is not None else None
    if cert_file is not None and key_file is not None:
        pair = load_key_pair(cert_file, key_file)
        return grpc.ssl_channel_credentials(ca, pair.private_key, pair.cert_chain)
    return grpc.ssl_channel_credentials(ca)
