"""Firms' credentials, encrypted at rest: OAuth tokens for the billing systems, webhook secrets and
API credentials for the phone providers.

Each value is a small JSON object sealed with AES-256-GCM under the key in
`CALLTIME_CREDENTIALS_KEY`. The associated data binds a ciphertext to its firm and name, so a row
copied to another firm does not decrypt. Plaintext lives only in memory; `Credential.__repr__`
hides it so it cannot reach a log line by accident.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_NONCE_BYTES = 12
_TAG_BYTES = 16


def webhook_credential(provider: str) -> str:
    """The name a firm's webhook secret for a phone provider is sealed under ({"secret": ...})."""
    return f"{provider}.webhook"


def api_credential(provider: str) -> str:
    """The name a firm's API credentials for a phone provider are sealed under."""
    return f"{provider}.api"


class MissingCredential(LookupError):
    pass


class CredentialCorrupt(ValueError):
    """The stored ciphertext does not open under this key (wrong key, or tampered row)."""


@dataclass(frozen=True, repr=False)
class Credential:
    firm_id: str
    name: str
    value: Mapping[str, Any]
    version: int

    def __repr__(self) -> str:
        return f"Credential(firm_id={self.firm_id!r}, name={self.name!r}, version={self.version})"


class Sealer:
    """AES-GCM with the firm and credential name as associated data."""

    def __init__(self, key_b64: str) -> None:
        if not isinstance(key_b64, (str, bytes)) or not key_b64.strip():
            raise ValueError("the credentials key is not set"
                             " (CALLTIME_CREDENTIALS_KEY: base64 of 32 random bytes)")
        try:
            # Surrounding whitespace is a trailing newline from a secrets file, not part of the key.
            key = base64.b64decode(key_b64.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("the credentials key must be base64") from None
        if len(key) != 32:
            raise ValueError("the credentials key must be 32 bytes (base64 of 32 random bytes)")
        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return "Sealer(<key hidden>)"

    def seal(self, firm_id: str, name: str, value: Mapping[str, Any]) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        plain = json.dumps(dict(value), separators=(",", ":")).encode()
        return nonce + self._aead.encrypt(nonce, plain, _aad(firm_id, name))

    def open(self, firm_id: str, name: str, sealed: bytes) -> dict[str, Any]:
        if len(sealed) < _NONCE_BYTES + _TAG_BYTES:
            # A truncated row would otherwise surface as AESGCM's "Nonce must be ..." ValueError.
            raise CredentialCorrupt(f"credential {name!r} of firm {firm_id!r} is truncated")
        try:
            plain = self._aead.decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], _aad(firm_id, name))
        except InvalidTag:
            raise CredentialCorrupt(f"credential {name!r} of firm {firm_id!r} does not open") from None
        return json.loads(plain)


def _aad(firm_id: str, name: str) -> bytes:
    return f"{firm_id}\x00{name}".encode()


class CredentialStore:
    """`core.credentials`, read and written through one sealer."""

    def __init__(self, pool: asyncpg.Pool, sealer: Sealer) -> None:
        self.pool = pool
        self.sealer = sealer

    async def get(self, firm_id: str, name: str) -> Credential:
        row = await self.pool.fetchrow(
            "SELECT sealed, version FROM core.credentials WHERE firm_id = $1 AND name = $2", firm_id, name)
        if row is None:
            raise MissingCredential(f"firm {firm_id!r} has no credential {name!r}")
        return Credential(firm_id, name, self.sealer.open(firm_id, name, bytes(row["sealed"])), row["version"])

    async def put(self, firm_id: str, name: str, value: Mapping[str, Any],
                  conn: asyncpg.Connection | None = None) -> Credential:
        sealed = self.sealer.seal(firm_id, name, value)
        version = await (conn or self.pool).fetchval(
            "INSERT INTO core.credentials AS c (firm_id, name, sealed) VALUES ($1, $2, $3)"
            " ON CONFLICT (firm_id, name) DO UPDATE SET sealed = EXCLUDED.sealed,"
            " version = c.version + 1, updated_at = now() RETURNING version", firm_id, name, sealed)
        return Credential(firm_id, name, dict(value), version)

    @contextlib.asynccontextmanager
    async def exclusive(self, firm_id: str, name: str) -> AsyncIterator[tuple[asyncpg.Connection, Credential]]:
        """The credential, row-locked until the block ends: one refresh at a time across every
        worker process; the others wait, then read what the first one wrote."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT sealed, version FROM core.credentials WHERE firm_id = $1 AND name = $2 FOR UPDATE",
                firm_id, name)
            if row is None:
                raise MissingCredential(f"firm {firm_id!r} has no credential {name!r}")
            yield conn, Credential(firm_id, name, self.sealer.open(firm_id, name, bytes(row["sealed"])),
                                   row["version"])
