"""The one signed-token codec of read-session names and Flight tickets."""

from __future__ import annotations

import dataclasses

import pytest

from lakehouse.core.read_sessions import SessionSigner
from lakehouse.core.signed_tokens import MAC_BYTES, SignedTokens, TokenError
from lakehouse.core.signing_key import SigningKey
from lakehouse.domain.errors import InvalidArgument, Unavailable
from lakehouse.domain.read_sessions import SessionClaims, b64decode, b64encode
from lakehouse.server.flight.tickets import TicketError, TicketSigner

KEY = SigningKey(b"k" * 32)
CLAIMS = SessionClaims("sales", "orders", 7, ("id",), "id > 1", 0, 2, "reader", 2_000_000)


def test_a_token_verifies_as_signed_and_not_once_changed() -> None:
    tokens = SignedTokens(KEY, "purpose one")
    token = tokens.sign(b"payload")
    assert len(token) == len(b"payload") + MAC_BYTES
    assert tokens.verify(token) == b"payload"
    for index in range(len(token)):  # any byte changed, of the payload or the signature
        changed = bytearray(token)
        changed[index] ^= 1
        with pytest.raises(TokenError):
            tokens.verify(bytes(changed))
    for bad in (b"", token[: MAC_BYTES - 1], token[:-1], token + b"x"):
        with pytest.raises(TokenError):
            tokens.verify(bad)


def test_a_token_of_another_purpose_or_key_does_not_verify() -> None:
    token = SignedTokens(KEY, "purpose one").sign(b"payload")
    with pytest.raises(TokenError):
        SignedTokens(KEY, "purpose two").verify(token)
    with pytest.raises(TokenError):
        SignedTokens(SigningKey(b"j" * 32), "purpose one").verify(token)


def test_signing_waits_for_the_key() -> None:
    with pytest.raises(Unavailable) as caught:
        SignedTokens(SigningKey(), "purpose").sign(b"payload")
    assert caught.value.reason == "SIGNING_KEY_UNAVAILABLE"


def test_session_names_and_tickets_map_the_codecs_error_to_their_own_reasons() -> None:
    name = SessionSigner(KEY).sign(CLAIMS)
    assert SessionSigner(KEY).verify(name) == CLAIMS
    payload, _, mac = name.partition(".")
    with pytest.raises(InvalidArgument) as caught:
        SessionSigner(KEY).verify(f"{payload}.{mac[:-2]}AA")
    assert caught.value.reason == "INVALID_READ_SESSION"
    ticket = TicketSigner(KEY, 60).sign("reader", b"r-payload")
    assert TicketSigner(KEY, 60).open(ticket, "reader").payload == b"r-payload"
    with pytest.raises(TicketError) as refused:
        TicketSigner(KEY, 60).open(ticket[:-1] + bytes([ticket[-1] ^ 1]), "reader")
    assert refused.value.reason == "FLIGHT_TICKET_INVALID"
    # A session name's signature is no ticket's: each purpose has its own derived key.
    with pytest.raises(TicketError):
        TicketSigner(KEY, 60).open(payload.encode() + b"\0" * MAC_BYTES, "reader")


def test_a_session_name_re_split_across_its_dot_does_not_verify() -> None:
    """``P + chr(mac[0]) . b64(mac[1:])`` is the same signed bytes as ``P . b64(mac)``: the
    signature part must be exactly one signature."""
    signer = SessionSigner(KEY)
    resplit = []
    for expire in range(2_000_000, 2_000_064):  # names whose signature starts with ASCII
        payload, _, mac = signer.sign(dataclasses.replace(CLAIMS, expire_ms=expire)).partition(".")
        signature = b64decode(mac)
        if signature[0] < 0x80:
            resplit.append(f"{payload}{chr(signature[0])}.{b64encode(signature[1:])}")
    assert resplit
    for name in resplit:
        with pytest.raises(InvalidArgument) as caught:
            signer.verify(name)
        assert caught.value.reason == "INVALID_READ_SESSION"
