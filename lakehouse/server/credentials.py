"""Verifying who a caller is: API keys, JWTs and mTLS client certificates.

The result of a successful check is a :class:`Principal`: a name, a role and, optionally, the
namespaces it may touch. A failed check raises :class:`CredentialError`, whose ``detail`` is
meant for the server log only: clients learn "missing credentials" or "invalid credentials"
and nothing about which check failed.

Keys and files are read when the :class:`Authenticator` is built at start-up, where a malformed
file stops the start with a :class:`~lakehouse.config.ConfigError`, and again whenever a key
file changes or the process gets SIGHUP (``LakehouseServer`` builds a fresh authenticator and
:meth:`Authenticator.take_keys_of` it); a file that no longer parses is then refused and the
keys in use stay.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, cast

import jwt
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import TypeAdapter, ValidationError

from lakehouse.config import ApiKey, AuthSettings, ConfigError, RoleName
from lakehouse.server.permissions import ROLE_ORDER

log = logging.getLogger("lakehouse.auth")

#: Prefix of every API key: tells a key from a JWT at a glance and lets secret scanners
#: (GitHub's, gitleaks) recognize leaked keys.
API_KEY_PREFIX: Final = "lh_"
API_KEY_RANDOM_BYTES: Final = 32
BEARER: Final = "bearer"
AUTHORIZATION_HEADER: Final = "authorization"
#: Keys of gRPC Python's ``context.auth_context()`` for a verified client certificate.
X509_COMMON_NAME: Final = "x509_common_name"
X509_SAN: Final = "x509_subject_alternative_name"
TRANSPORT_SECURITY_TYPE: Final = "transport_security_type"

Via = Literal["api_key", "jwt", "mtls", "none"]
_RSA_ALGORITHMS: Final = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_CURVES: Final[Mapping[str, type[ec.EllipticCurve]]] = {
    "ES256": ec.SECP256R1,
    "ES384": ec.SECP384R1,
    "ES512": ec.SECP521R1,
}
_MIN_RSA_BITS: Final = 2048
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----.+?-----END \1-----", re.DOTALL)
_API_KEYS: Final = TypeAdapter(list[ApiKey])
#: Schemes that a refused ``authorization`` header is named by in the log (IANA's HTTP
#: authentication scheme registry, plus the common ``Token``); any other first word may be a
#: credential sent without a scheme, and only its length is logged.
_KNOWN_SCHEMES: Final[Mapping[str, str]] = {
    name.lower(): name
    for name in (
        "Basic",
        "Concealed",
        "Digest",
        "DPoP",
        "GNAP",
        "HOBA",
        "Mutual",
        "Negotiate",
        "OAuth",
        "PrivateToken",
        "SCRAM-SHA-1",
        "SCRAM-SHA-256",
        "Token",
        "vapid",
    )
}


@dataclass(frozen=True)
class Principal:
    """An authenticated caller.

    Attributes:
        name: Who it is: the API key's name, the JWT's ``sub``, or the certificate name that
            matched ``auth.mtls_roles``.
        role: Its role.
        namespaces: The namespaces it may touch; None means all.
        via: How it authenticated (``none`` when authentication is off).
    """

    name: str
    role: RoleName
    namespaces: frozenset[str] | None = None
    via: Via = "none"

    def may_touch(self, namespace: str) -> bool:
        """Whether the principal's grants cover ``namespace``."""
        return self.namespaces is None or namespace in self.namespaces


#: Every caller when authentication is off.
ANONYMOUS: Final = Principal("anonymous", "admin", None, "none")


class CredentialError(Exception):
    """A caller could not be authenticated.

    Attributes:
        missing: True when the call carried no credentials at all (the client may not know
            it must send some), False when it carried credentials that did not verify.
        detail: Why, for the server log; never sent to the client, never holds the token.
    """

    def __init__(self, detail: str, *, missing: bool = False) -> None:
        super().__init__(detail)
        self.missing = missing
        self.detail = detail

    @property
    def client_message(self) -> str:
        """All a client is told."""
        return "missing credentials" if self.missing else "invalid credentials"


def new_api_key(
    name: str, role: RoleName, namespaces: Sequence[str] | None = None
) -> tuple[str, ApiKey]:
    """Makes a fresh API key and the configuration entry that accepts it.

    Args:
        name: The principal the key stands for.
        role: Its role.
        namespaces: The namespaces it may touch; None means all.

    Returns:
        The key (to hand over once; the service never stores it) and its entry, which holds
        only the key's SHA-256.

    Raises:
        pydantic.ValidationError: The name, role or namespaces are not valid.
    """
    key = API_KEY_PREFIX + secrets.token_urlsafe(API_KEY_RANDOM_BYTES)
    entry = ApiKey(
        name=name,
        sha256=hashlib.sha256(key.encode()).hexdigest(),
        role=role,
        namespaces=tuple(namespaces) if namespaces is not None else None,
    )
    return key, entry


class ApiKeyVerifier:
    """Checks static API keys against their configured SHA-256 hashes."""

    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self._keys = [(bytes.fromhex(key.sha256), key) for key in keys]
        names = [key.name for _, key in self._keys]
        hashes = [digest for digest, _ in self._keys]
        if len(set(names)) != len(names) or len(set(hashes)) != len(hashes):
            raise ConfigError(
                "auth: every API key needs its own name and its own sha256 "
                "(across auth.api_keys and auth.api_keys_file)"
            )

    def __len__(self) -> int:
        return len(self._keys)

    def verify(self, token: str) -> Principal:
        """The principal of an API key.

        Every configured hash is compared, each in constant time (``hmac.compare_digest``),
        so neither the timing of one comparison nor the number made says anything about
        how close a guess was.

        Raises:
            CredentialError: No configured key matches.
        """
        digest = hashlib.sha256(token.encode()).digest()
        found: ApiKey | None = None
        for expected, key in self._keys:
            if hmac.compare_digest(digest, expected):
                found = key
        if found is None:
            raise CredentialError("unknown API key")
        namespaces = frozenset(found.namespaces) if found.namespaces is not None else None
        return Principal(found.name, found.role, namespaces, "api_key")


PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
#: Accepted JWTs a verifier remembers (a few hundred bytes each): callers send the same token
#: for its whole life, so this covers that many concurrent callers.
MAX_ACCEPTED_TOKENS = 4096


class JwtVerifier:
    """Checks JWTs: signature, ``exp``, ``nbf``, ``iss``, ``aud``; reads role and grants.

    Only the configured algorithms are accepted, and each algorithm is verified only with
    keys of its own kind: the shared secret for HS*, RSA keys for RS*/PS*, EC keys of the
    matching curve for ES*. A token cannot choose how it is checked (``alg: none``, or HS256
    "signed" with a public key, the classic algorithm confusion).
    """

    def __init__(
        self,
        *,
        algorithms: Iterable[str],
        secret: bytes | None = None,
        public_keys: Sequence[PublicKey] = (),
        jwks: Sequence[jwt.PyJWK] = (),
        issuer: str | None = None,
        audience: str | None = None,
        leeway_seconds: float = 30.0,
        role_claim: str = "role",
        namespaces_claim: str | None = None,
    ) -> None:
        self._algorithms = frozenset(algorithms)
        self._secret = secret
        self._public_keys = tuple(public_keys)
        self._jwks = tuple(jwks)
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway_seconds
        self._role_claim = role_claim
        self._namespaces_claim = namespaces_claim
        required = ["exp", "sub"]
        if issuer is not None:
            required.append("iss")
        if audience is not None:
            required.append("aud")
        self._required = required
        # Tokens this verifier accepted: principal and until when (exp + leeway, what a new
        # verification would accept). A signature check costs tens to hundreds of
        # microseconds on every call of a client that sends the same token each time.
        # Safe: the outcome depends only on the token, these keys and the time; a reload
        # builds a new verifier (AuthKeys), so rotated-out keys take their tokens with them.
        self._accepted: dict[str, tuple[Principal, float]] = {}

    @property
    def algorithms(self) -> list[str]:
        """The accepted algorithms, sorted."""
        return sorted(self._algorithms)

    def verify(self, token: str) -> Principal:
        """The principal of a JWT.

        Raises:
            CredentialError: The token is malformed, uses another algorithm, has no valid
                signature from a configured key, is expired or not yet valid, has the wrong
                issuer or audience, or names no known role.
        """
        accepted = self._accepted.get(token)
        if accepted is not None:
            principal, until = accepted
            if time.time() < until:
                return principal
            # Flight's threads verify too: another may have forgotten it meanwhile.
            self._accepted.pop(token, None)
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise CredentialError(f"malformed JWT: {exc}") from None
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in self._algorithms:
            raise CredentialError(f"JWT algorithm {algorithm!r} is not accepted")
        kid = header.get("kid")
        keys = self._keys_for(algorithm, kid if isinstance(kid, str) else None)
        if not keys:
            raise CredentialError(f"no configured key verifies {algorithm} (kid {kid!r})")
        claims = self._decode(token, algorithm, keys)
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise CredentialError("JWT sub is not a non-empty string")
        principal = Principal(subject, self._role(claims), self._namespaces(claims), "jwt")
        self._remember(token, principal, float(claims["exp"]) + self._leeway)
        return principal

    def _remember(self, token: str, principal: Principal, until: float) -> None:
        """Keeps an accepted token (the oldest is forgotten past ``MAX_ACCEPTED_TOKENS``)."""
        if len(self._accepted) >= MAX_ACCEPTED_TOKENS:
            # Called from the event loop and from Flight's threads: the oldest may go twice.
            with contextlib.suppress(StopIteration, RuntimeError):
                self._accepted.pop(next(iter(self._accepted)), None)
        self._accepted[token] = (principal, until)

    def _keys_for(self, algorithm: str, kid: str | None) -> list[Any]:
        if algorithm.startswith("HS"):
            return [self._secret] if self._secret is not None else []
        keys: list[Any] = [
            k
            for k in self._jwks
            if k.algorithm_name == algorithm and (kid is None or k.key_id == kid)
        ]
        keys += [k for k in self._public_keys if _fits(k, algorithm)]
        return keys

    def _decode(self, token: str, algorithm: str, keys: list[Any]) -> dict[str, Any]:
        for key in keys:
            try:
                claims: dict[str, Any] = jwt.decode(
                    token,
                    key,
                    algorithms=[algorithm],
                    issuer=self._issuer,
                    audience=self._audience,
                    leeway=self._leeway,
                    options={"require": self._required},
                )
            except jwt.InvalidSignatureError:
                continue  # another key (a JWKS during rotation, several PEM keys) may fit
            except jwt.InvalidTokenError as exc:
                raise CredentialError(f"JWT rejected: {type(exc).__name__}: {exc}") from None
            return claims
        raise CredentialError(f"JWT signature verifies with no configured {algorithm} key")

    def _role(self, claims: Mapping[str, Any]) -> RoleName:
        value = _claim(claims, self._role_claim)
        named = [value] if isinstance(value, str) else value if isinstance(value, list) else []
        best: RoleName | None = None
        for role in ROLE_ORDER:  # least privileged first: the last one held wins
            if role in named:
                best = role
        if best is None:
            raise CredentialError(
                f"JWT claim {self._role_claim!r} holds no known role ({', '.join(ROLE_ORDER)})"
            )
        return best

    def _namespaces(self, claims: Mapping[str, Any]) -> frozenset[str] | None:
        if self._namespaces_claim is None:
            return None
        value = _claim(claims, self._namespaces_claim)
        if value is None:
            return None
        if isinstance(value, str):
            return frozenset(part for part in re.split(r"[\s,]+", value) if part)
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return frozenset(value)
        raise CredentialError(
            f"JWT claim {self._namespaces_claim!r} is neither a list of names nor a string"
        )


def _claim(claims: Mapping[str, Any], name: str) -> Any:
    """A claim by name, or by dotted path into nested objects (``realm_access.roles``).

    The exact name is tried first: claim names may contain dots themselves (Auth0's
    namespaced claims are URLs).
    """
    if name in claims:
        return claims[name]
    node: Any = claims
    for part in name.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _fits(key: PublicKey, algorithm: str) -> bool:
    if algorithm in _RSA_ALGORITHMS:
        return isinstance(key, rsa.RSAPublicKey)
    curve = _EC_CURVES.get(algorithm)
    return (
        curve is not None
        and isinstance(key, ec.EllipticCurvePublicKey)
        and isinstance(key.curve, curve)
    )


def principal_from_peer(
    auth_context: Mapping[str, Iterable[bytes]], mtls_roles: Mapping[str, RoleName]
) -> Principal | None:
    """The principal of a client certificate verified by the server's TLS layer.

    gRPC puts a verified client certificate's names into ``context.auth_context()``
    (``x509_subject_alternative_name`` and ``x509_common_name``, lists of bytes) only when
    the handshake verified it against the configured client CA (``tls.require_client_cert``);
    on a plaintext port the keys are absent. The first name found in ``mtls_roles`` wins:
    subject alternative names first, in certificate order, then the common name (SANs are
    what modern CAs vouch for; the CN is the fallback).

    Args:
        auth_context: ``context.auth_context()`` of the call.
        mtls_roles: Role by certificate name (``auth.mtls_roles``).

    Returns:
        The principal, named after the matching certificate name; None without a verified
        certificate or when none of its names has a role.
    """
    security = [bytes(v) for v in auth_context.get(TRANSPORT_SECURITY_TYPE, ())]
    if security and b"ssl" not in security:
        return None
    names = [
        *(bytes(v) for v in auth_context.get(X509_SAN, ())),
        *(bytes(v) for v in auth_context.get(X509_COMMON_NAME, ())),
    ]
    for raw in names:
        name = raw.decode("utf-8", "replace")
        role = mtls_roles.get(name)
        if role is not None:
            return Principal(name, role, None, "mtls")
    return None


def peer_names(auth_context: Mapping[str, Iterable[bytes]]) -> list[str]:
    """The certificate names of a peer, for the log line of a refused certificate."""
    return [
        bytes(v).decode("utf-8", "replace")
        for key in (X509_SAN, X509_COMMON_NAME)
        for v in auth_context.get(key, ())
    ]


Metadata = Iterable[tuple[str, str | bytes]]
AuthContext = Callable[[], Mapping[str, Iterable[bytes]]]


class Authenticator:
    """Turns a call's metadata (and TLS peer) into a :class:`Principal`.

    A bearer token wins over a client certificate: a caller that sends a token means it, and
    a bad token fails the call rather than falling back to the certificate.

    Args:
        enabled: Whether callers must authenticate; when False everyone is
            :data:`ANONYMOUS` (an admin).
        api_keys: The API key verifier.
        jwts: The JWT verifier; None when no JWT key is configured.
        mtls_roles: Role by client certificate name.
    """

    def __init__(
        self,
        *,
        enabled: bool,
        api_keys: ApiKeyVerifier | None = None,
        jwts: JwtVerifier | None = None,
        mtls_roles: Mapping[str, RoleName] | None = None,
    ) -> None:
        self.enabled = enabled
        self._api_keys = api_keys or ApiKeyVerifier(())
        self._jwts = jwts
        self._mtls_roles = dict(mtls_roles or {})

    @classmethod
    def from_settings(cls, settings: AuthSettings) -> Authenticator:
        """Builds the authenticator, reading the key files the settings name.

        Raises:
            ConfigError: A key file is missing, unreadable or malformed.
        """
        keys = list(settings.api_keys)
        if settings.api_keys_file is not None:
            keys += load_api_keys_file(settings.api_keys_file)
        algorithms = settings.effective_jwt_algorithms
        jwts = None
        if algorithms:
            jwts = JwtVerifier(
                algorithms=algorithms,
                secret=(
                    settings.jwt_secret.get_secret_value().encode()
                    if settings.jwt_secret is not None
                    else None
                ),
                public_keys=(
                    load_public_keys(settings.jwt_public_key_file)
                    if settings.jwt_public_key_file is not None
                    else ()
                ),
                jwks=load_jwks(settings.jwt_jwks_file) if settings.jwt_jwks_file else (),
                issuer=settings.jwt_issuer,
                audience=settings.jwt_audience,
                leeway_seconds=settings.jwt_leeway_seconds,
                role_claim=settings.jwt_role_claim,
                namespaces_claim=settings.jwt_namespaces_claim,
            )
        return cls(
            enabled=settings.enabled,
            api_keys=ApiKeyVerifier(keys),
            jwts=jwts,
            mtls_roles=settings.mtls_roles,
        )

    def take_keys_of(self, fresh: Authenticator) -> None:
        """Verifies with the API keys and JWT keys of ``fresh`` from now on (a reload).

        Calls already authenticated keep their principal; each assignment is atomic, so a
        call sees either the old or the new keys of each kind.
        """
        self._api_keys = fresh._api_keys
        self._jwts = fresh._jwts

    def describe(self) -> dict[str, Any]:
        """What is configured, for the start-up log line (no secrets)."""
        return {
            "api_keys": len(self._api_keys),
            "jwt_algorithms": self._jwts.algorithms if self._jwts is not None else [],
            "mtls_roles": len(self._mtls_roles),
        }

    def authenticate(self, metadata: Metadata, auth_context: AuthContext) -> Principal:
        """The caller of one call.

        Args:
            metadata: The call's invocation metadata.
            auth_context: Returns the call's ``context.auth_context()``; only called when no
                bearer token came and mTLS roles are configured.

        Raises:
            CredentialError: No credentials, or credentials that do not verify.
        """
        if not self.enabled:
            return ANONYMOUS
        token = _bearer_token(metadata)
        if token is not None:
            return self._verify_token(token)
        if self._mtls_roles:
            peer = auth_context()
            principal = principal_from_peer(peer, self._mtls_roles)
            if principal is not None:
                return principal
            names = peer_names(peer)
            if names:
                raise CredentialError(
                    f"client certificate {', '.join(names)} has no role in auth.mtls_roles"
                )
        raise CredentialError("no bearer token and no client certificate", missing=True)

    def _verify_token(self, token: str) -> Principal:
        if token.startswith(API_KEY_PREFIX):
            if not len(self._api_keys):
                raise CredentialError("an API key was sent but none is configured")
            return self._api_keys.verify(token)
        if token.count(".") == 2:
            if self._jwts is None:
                raise CredentialError("a JWT was sent but no JWT key is configured")
            return self._jwts.verify(token)
        raise CredentialError("the bearer token is neither an API key nor a JWT")


def _bearer_token(metadata: Metadata) -> str | None:
    """The token of the ``authorization: Bearer <token>`` metadata, None without one.

    Raises:
        CredentialError: The header is there but is not one well-formed bearer token.
    """
    values = [v for k, v in metadata if k == AUTHORIZATION_HEADER]
    if not values:
        return None
    if len(values) > 1:
        raise CredentialError("more than one authorization header")
    value = values[0]
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != BEARER or not token:
        raise CredentialError(
            f"the authorization header is not 'Bearer <token>': {_shape(scheme, token)}"
        )
    return token


def _shape(scheme: str, token: str) -> str:
    """What a refused authorization header looked like, safe for the log.

    Nothing the caller sent is quoted unless it is a well-known scheme name: a client that
    forgets ``Bearer`` sends its key as the "scheme", and even a prefix of it would put part
    of a working key into the log.
    """
    if scheme.lower() == BEARER:
        return "Bearer without a token"
    if not token:
        return f"no scheme, a single word of {len(scheme)} characters"
    known = _KNOWN_SCHEMES.get(scheme.lower())
    if known is not None:
        return f"scheme {known}"
    return f"an unknown scheme of {len(scheme)} characters"


def load_api_keys_file(path: Path) -> list[ApiKey]:
    """The API keys of a YAML or JSON file: a list of ``{name, sha256, role, namespaces?}``.

    Raises:
        ConfigError: The file is missing, unreadable or not such a list.
    """
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"auth.api_keys_file: cannot read {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"auth.api_keys_file: {path} is not YAML or JSON") from exc
    try:
        return _API_KEYS.validate_python(data if data is not None else [])
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"auth.api_keys_file: {path}: {where}: {first['msg']}") from exc


def load_public_keys(path: Path) -> list[PublicKey]:
    """The RSA and EC public keys of a PEM file (public keys or certificates, one or more).

    Raises:
        ConfigError: The file is missing or unreadable, holds no public key, holds a private
            key (which has no place on the server), or a key is not RSA of at least 2048
            bits or EC.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"auth.jwt_public_key_file: cannot read {path}: {exc.strerror}") from exc
    keys: list[PublicKey] = []
    for match in _PEM_BLOCK.finditer(data):
        label, block = match.group(1).decode(), match.group(0)
        try:
            if label == "CERTIFICATE":
                key: Any = x509.load_pem_x509_certificate(block).public_key()
            elif label in ("PUBLIC KEY", "RSA PUBLIC KEY"):
                key = serialization.load_pem_public_key(block)
            elif "PRIVATE KEY" in label:
                raise ConfigError(
                    f"auth.jwt_public_key_file: {path} holds a private key; give the server "
                    "only the public key"
                )
            else:
                continue
        except ValueError as exc:
            raise ConfigError(f"auth.jwt_public_key_file: {path}: {exc}") from exc
        keys.append(_checked_key(key, f"auth.jwt_public_key_file: {path}"))
    if not keys:
        raise ConfigError(f"auth.jwt_public_key_file: {path} holds no PEM public key")
    return keys


def _checked_key(key: Any, where: str) -> PublicKey:
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < _MIN_RSA_BITS:
            raise ConfigError(f"{where}: an RSA key has {key.key_size} bits; use {_MIN_RSA_BITS}+")
        return key
    if isinstance(key, ec.EllipticCurvePublicKey):
        return key
    raise ConfigError(f"{where}: only RSA and EC keys verify JWTs here")


def load_jwks(path: Path) -> list[jwt.PyJWK]:
    """The public keys of a JWKS file (``{"keys": [...]}``, as an identity provider serves it).

    Symmetric (``oct``) keys are refused: a shared secret belongs in ``auth.jwt_secret``, a
    secret store, not in a key set file that is usually world-readable.

    Raises:
        ConfigError: The file is missing, unreadable, not a JWKS, or holds a key that is
            not a usable RSA or EC public key.
    """
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"auth.jwt_jwks_file: cannot read {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise ConfigError(f"auth.jwt_jwks_file: {path} is not JSON") from exc
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f'auth.jwt_jwks_file: {path} has no "keys" list')
    keys: list[jwt.PyJWK] = []
    for index, entry in enumerate(entries):
        where = f"auth.jwt_jwks_file: {path}: keys[{index}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} is not an object")
        if entry.get("use", "sig") != "sig":
            continue  # an encryption key in a shared key set: not ours to use
        if entry.get("kty") not in ("RSA", "EC"):
            raise ConfigError(f"{where}: kty {entry.get('kty')!r} is not RSA or EC")
        if "d" in entry:
            raise ConfigError(f"{where} is a private key; publish only the public key")
        try:
            key = jwt.PyJWK.from_dict(cast(dict[str, Any], entry))
        except jwt.PyJWTError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
        _checked_key(key.key, where)
        keys.append(key)
    return keys
