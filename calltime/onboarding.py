"""Onboarding: what connecting a firm's phone system and billing system records. Secrets go to
the sealed credential store, never to a plain column; used by the demo, the tests and (later)
the admin UI."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import asyncpg

from calltime.billing import connect
from calltime.credentials import CredentialStore, api_credential, webhook_credential

BILLING_TOKENS = connect.BILLING_TOKENS  # {access_token, refresh_token, expires_at}; `billing.client` holds the app id/secret


async def create_firm(conn: asyncpg.Connection, *, firm_id: str, name: str, billing_system: str,
                      billing_base_url: str, billing_credential_ref: str, api_key_sha256: bytes | None = None,
                      rounding_rule: str = "nearest", default_time_zone: str = "America/New_York") -> None:
    """The firm and its billing system. A static billing token is named by `billing_credential_ref`
    in the secrets store; an OAuth connection is added with `connect_billing_oauth`."""
    await conn.execute(
        "INSERT INTO core.firms (firm_id, name, billing_system, billing_base_url, billing_credential_ref,"
        " rounding_rule, default_time_zone, api_key_sha256) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        firm_id, name, billing_system, billing_base_url, billing_credential_ref, rounding_rule,
        default_time_zone, api_key_sha256)


async def connect_phone_provider(credentials: CredentialStore, conn: asyncpg.Connection, *, firm_id: str,
                                 provider: str, account_id: str, webhook_secret: str,
                                 users: Mapping[str, str], api_base_url: str | None = None,
                                 api_credentials: Mapping[str, Any] | None = None) -> None:
    """`users` maps the provider's user / extension ids to billing user ids."""
    await conn.execute(
        "INSERT INTO ingest.provider_accounts (firm_id, provider, account_id, api_base_url)"
        " VALUES ($1, $2, $3, $4) ON CONFLICT (firm_id, provider) DO UPDATE"
        " SET account_id = EXCLUDED.account_id, api_base_url = EXCLUDED.api_base_url",
        firm_id, provider, account_id, api_base_url)
    await credentials.put(firm_id, webhook_credential(provider), {"secret": webhook_secret}, conn=conn)
    if api_credentials is not None:
        await credentials.put(firm_id, api_credential(provider), api_credentials, conn=conn)
    await conn.executemany(
        "INSERT INTO ingest.phone_users (firm_id, provider, provider_user_id, attorney_user_id)"
        " VALUES ($1, $2, $3, $4) ON CONFLICT (firm_id, provider, provider_user_id)"
        " DO UPDATE SET attorney_user_id = EXCLUDED.attorney_user_id",
        [(firm_id, provider, user, attorney) for user, attorney in users.items()])


async def connect_billing_oauth(credentials: CredentialStore, conn: asyncpg.Connection, *, firm_id: str,
                                access_token: str, refresh_token: str | None, expires_at: float | None,
                                client_id: str, client_secret: str, token_url: str, client_auth: str = "body",
                                api_key: str | None = None) -> None:
    """Connect a firm's billing system by OAuth: tokens sealed, refreshed at `token_url`.
    `api_key` is Smokeball's per-app key, sent with every request."""
    await credentials.put(firm_id, BILLING_TOKENS, {"access_token": access_token, "refresh_token": refresh_token,
                                                    "expires_at": expires_at}, conn=conn)
    client = {"client_id": client_id, "client_secret": client_secret} | ({"api_key": api_key} if api_key else {})
    await credentials.put(firm_id, f"{BILLING_TOKENS}.client", client, conn=conn)
    await conn.execute("UPDATE core.firms SET billing_token_url = $2, billing_client_auth = $3 WHERE firm_id = $1",
                       firm_id, token_url, client_auth)
