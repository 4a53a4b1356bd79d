"""Which billing adapter serves a firm, built once per firm and kept for the process: each client
holds its own token's pacing state, so one firm's pace never leaks into another's.

A firm connected by OAuth (a `billing` credential in the sealed store and a token URL) gets an
`OAuthSession` that refreshes ahead of expiry; otherwise the firm's static token is read from the
secrets store by the name in `core.firms.billing_credential_ref`.
"""

from __future__ import annotations

import importlib

from calltime.billing.auth import AccessTokens, OAuthSession, StaticToken
from calltime.billing.port import BillingSystem
from calltime.credentials import CredentialStore, MissingCredential
from calltime.firms import Firm
from calltime.secrets import EnvironmentSecrets

# system -> (module, client class); every class takes (base_url, tokens)
ADAPTERS = {
    "clio": ("calltime.billing.clio", "ClioClient"),
    "mycase": ("calltime.billing.mycase", "MyCaseClient"),
    "practicepanther": ("calltime.billing.practicepanther", "PracticePantherClient"),
    "timesolv": ("calltime.billing.timesolv", "TimeSolvClient"),
    "smokeball": ("calltime.billing.smokeball", "SmokeballClient"),
}
BILLING_TOKENS = "billing"


class UnsupportedBillingSystem(LookupError):
    pass


def client_class(system: str) -> type:
    if system not in ADAPTERS:
        raise UnsupportedBillingSystem(f"billing system {system!r} is not supported; known: {', '.join(ADAPTERS)}")
    module, name = ADAPTERS[system]
    return getattr(importlib.import_module(module), name)


class BillingClients:
    def __init__(self, credentials: CredentialStore | None = None,
                 secrets: EnvironmentSecrets | None = None) -> None:
        self.credentials = credentials
        self.secrets = secrets or EnvironmentSecrets()
        self.clients: dict[str, BillingSystem] = {}

    async def for_firm(self, firm: Firm) -> BillingSystem:
        client = self.clients.get(firm.firm_id)
        if client is None:
            cls = client_class(firm.billing_system)
            client = self.clients[firm.firm_id] = cls(firm.billing_base_url, await self._tokens(firm),
                                                      **await self._options(firm))
        return client

    async def _options(self, firm: Firm) -> dict[str, str]:
        """What a system needs beyond a base URL and tokens: Smokeball's API key (with the app's
        client id and secret in the sealed store, else `<credential ref>-api-key` in secrets)."""
        if firm.billing_system != "smokeball":
            return {}
        if self.credentials is not None:
            try:
                client = (await self.credentials.get(firm.firm_id, f"{BILLING_TOKENS}.client")).value
                if client.get("api_key"):
                    return {"api_key": client["api_key"]}
            except MissingCredential:
                pass
        return {"api_key": self.secrets.get(f"{firm.billing_credential_ref}-api-key")}

    async def _tokens(self, firm: Firm) -> AccessTokens:
        if self.credentials is not None and firm.billing_token_url:
            try:
                await self.credentials.get(firm.firm_id, BILLING_TOKENS)
            except MissingCredential:
                pass
            else:
                return OAuthSession(self.credentials, firm.firm_id, BILLING_TOKENS, firm.billing_token_url,
                                    client_auth=firm.billing_client_auth)
        return StaticToken(self.secrets.get(firm.billing_credential_ref))

    async def aclose(self) -> None:
        for client in self.clients.values():
            close = getattr(client, "aclose", None)
            if close:
                await close()
