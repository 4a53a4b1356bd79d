"""Firms' credentials sealed at rest (`calltime.credentials.Sealer`): what opens, what does not,
and what never shows up in a repr or an error message."""

from __future__ import annotations

import base64
import os

import pytest

from calltime.billing.auth import StaticToken
from calltime.credentials import Credential, CredentialCorrupt, Sealer

KEY = base64.b64encode(bytes(range(32))).decode()
OTHER_KEY = base64.b64encode(bytes(range(1, 33))).decode()
TOKENS = {"access_token": "at-6Yx2PqRw-live", "refresh_token": "rt-Zq81mN0v-live", "expires_at": 1_790_000_000.5}


def test_a_sealed_value_opens_to_the_same_value_under_its_firm_and_name() -> None:
    sealer = Sealer(KEY)
    value = {**TOKENS, "note": "Ünïcode ✓", "nested": {"scopes": ["read", "write"]}, "none": None}
    sealed = sealer.seal("firm-a", "billing", value)
    assert sealer.open("firm-a", "billing", sealed) == value
    # A fresh nonce each time: equal plaintexts do not give equal rows.
    assert sealer.seal("firm-a", "billing", value) != sealed


def test_the_ciphertext_does_not_carry_the_plaintext() -> None:
    sealed = Sealer(KEY).seal("firm-a", "billing", TOKENS)
    for secret in (TOKENS["access_token"], TOKENS["refresh_token"]):
        assert secret.encode() not in sealed


@pytest.mark.parametrize(("firm", "name"), [
    ("firm-b", "billing"),        # the row copied to another firm
    ("firm-a", "billing.client"),  # the row copied to another credential of the same firm
    ("firm-", "abilling"),         # the same characters split differently between firm and name
])
def test_a_ciphertext_moved_to_another_firm_or_name_does_not_open(firm: str, name: str) -> None:
    sealer = Sealer(KEY)
    sealed = sealer.seal("firm-a", "billing", TOKENS)
    with pytest.raises(CredentialCorrupt) as raised:
        sealer.open(firm, name, sealed)
    assert TOKENS["access_token"] not in str(raised.value)


def test_another_key_does_not_open_it() -> None:
    sealed = Sealer(KEY).seal("firm-a", "billing", TOKENS)
    with pytest.raises(CredentialCorrupt, match="does not open"):
        Sealer(OTHER_KEY).open("firm-a", "billing", sealed)


@pytest.mark.parametrize("damage", [
    lambda b: b[:-1] + bytes([b[-1] ^ 1]),        # one bit of the tag
    lambda b: b[:12] + bytes([b[12] ^ 0x80]) + b[13:],  # one bit of the ciphertext
    lambda b: bytes([b[0] ^ 1]) + b[1:],          # the nonce
    lambda b: b[:20],                             # cut short
    lambda b: b[:5],                              # shorter than a nonce
    lambda b: b"",
])
def test_a_damaged_row_is_reported_as_corrupt_not_as_a_crash(damage) -> None:
    sealer = Sealer(KEY)
    sealed = sealer.seal("firm-a", "billing", TOKENS)
    with pytest.raises(CredentialCorrupt):
        sealer.open("firm-a", "billing", damage(sealed))


@pytest.mark.parametrize(("key", "message"), [
    ("", "not set"),
    (None, "not set"),
    ("   ", "not set"),
    ("this is not base64!", "must be base64"),
    (base64.urlsafe_b64encode(b"\xfb" * 32).decode(), "must be base64"),  # the URL-safe alphabet
    (base64.b64encode(os.urandom(16)).decode(), "32 bytes"),                # AES-128 is not what we run
    (base64.b64encode(os.urandom(33)).decode(), "32 bytes"),
])
def test_a_bad_key_is_refused_with_a_clear_message_that_does_not_echo_it(key, message: str) -> None:
    with pytest.raises(ValueError, match=message) as raised:
        Sealer(key)
    if key and key.strip():
        assert key not in str(raised.value)


def test_a_key_read_from_a_file_with_its_trailing_newline_still_works() -> None:
    sealed = Sealer(KEY).seal("firm-a", "billing", TOKENS)
    assert Sealer(KEY + "\n").open("firm-a", "billing", sealed) == TOKENS


def test_reprs_hide_keys_and_values() -> None:
    sealer = Sealer(KEY)
    credential = Credential("firm-a", "billing", TOKENS, 3)
    shown = " ".join([repr(sealer), str(sealer), repr(credential), str(credential),
                      repr(StaticToken(TOKENS["access_token"])), repr([credential])])
    for secret in (KEY, TOKENS["access_token"], TOKENS["refresh_token"], str(TOKENS["expires_at"])):
        assert secret not in shown
    # What a log line needs to find the row is still there.
    assert "firm-a" in repr(credential) and "billing" in repr(credential) and "version=3" in repr(credential)
