"""Which billing adapter serves a firm, built once per firm and kept for the process: each client
holds its own token's rate-limit state, so one firm's pace never leaks into another's."""

from __future__ import annotations

from calltime.billing.clio import ClioClient
from calltime.billing.port import BillingSystem
from calltime.firms import Firm
from calltime.secrets import EnvironmentSecrets


class UnsupportedBillingSystem(LookupError):
    pass


class BillingClients:
    def __init__(self, secrets: EnvironmentSecrets | None = None) -> None:
        self.secrets = secrets or EnvironmentSecrets()
        self.clients: dict[str, BillingSystem] = {}

    def for_firm(self, firm: Firm) -> BillingSystem:
        client = self.clients.get(firm.firm_id)
        if client is None:
            client = self.clients[firm.firm_id] = self._build(firm)
        return client

    def _build(self, firm: Firm) -> BillingSystem:
        if firm.billing_system == "clio":
            return ClioClient(firm.billing_base_url, self.secrets.get(firm.billing_credential_ref))
        raise UnsupportedBillingSystem(f"billing system {firm.billing_system!r} is not supported yet")
