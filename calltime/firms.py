"""A firm's configuration (core.firms), read by every service."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

import asyncpg


@dataclass(frozen=True)
class Firm:
    firm_id: str
    name: str
    billing_system: str
    billing_base_url: str
    billing_credential_ref: str
    rounding_rule: str
    activity_code: str
    narrative_template: str
    currency: str
    default_time_zone: str
    phone_region: str
    billing_token_url: str | None = None
    billing_client_auth: str = "body"


class UnknownFirm(LookupError):
    pass


async def load_firm(conn: asyncpg.Connection | asyncpg.Pool, firm_id: str) -> Firm:
    row = await conn.fetchrow(
        "SELECT firm_id, name, billing_system, billing_base_url, billing_credential_ref,"
        " rounding_rule, activity_code, narrative_template, currency, default_time_zone,"
        " phone_region, billing_token_url, billing_client_auth FROM core.firms WHERE firm_id = $1", firm_id)
    if row is None:
        raise UnknownFirm(f"no firm {firm_id!r}")
    return Firm(**dict(row))


async def firm_api_key_valid(pool: asyncpg.Pool, firm_id: str, authorization: str | None) -> bool:
    """Whether `Authorization: Bearer <key>` carries this firm's API key (stored as a digest)."""
    digest = await pool.fetchval("SELECT api_key_sha256 FROM core.firms WHERE firm_id = $1",
                                 firm_id)
    presented = (authorization or "").removeprefix("Bearer ").strip()
    return bool(digest and presented and hmac.compare_digest(
        hashlib.sha256(presented.encode()).digest(), bytes(digest)))
