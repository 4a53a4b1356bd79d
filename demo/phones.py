"""The five phone systems as the demo, the e2e tests and the benchmarks stand them up: each
provider's fake API (call log, tokens, subscriptions) served on a local port, its webhook
simulator, and the onboarding that connects a firm to it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg

from calltime.demo.stack import LocalStack, stack_credentials
from calltime.fakes import dialpad, graph, ringcentral, vonage, zoom
from calltime.fakes.calls import SimulatedCall
from calltime.fakes.server import BackgroundServer
from calltime.onboarding import connect_phone_provider


@dataclass(frozen=True)
class PhoneSystem:
    name: str
    account_id: str
    secret: str
    new_state: Callable[[str], Any]
    api_app: Callable[[Any], Any]
    api_credentials: Callable[[Any], dict[str, str]]
    new_simulator: Callable[[str, str, str, Any], Any]
    # (result, connected seconds) the provider's own records show for a call
    expected: Callable[[SimulatedCall], tuple[str, int]] = lambda call: (call.outcome, call.connected_seconds)


PHONE_SYSTEMS = {
    "ringcentral": PhoneSystem(
        "ringcentral", "400777", "rc-verification-token",
        lambda account: ringcentral.RingCentralApiState(account),
        ringcentral.create_api_app,
        lambda state: state.add_app("calltime-rc-app", "rc-client-secret"),
        lambda url, secret, account, state: ringcentral.RingCentralSimulator(url, secret, account_id=account,
                                                                             api=state)),
    "graph": PhoneSystem(
        "graph", "5f0ab0e1-7c1d-4a39-9d3c-0f6e1c2b9a77", "graph-client-state",
        lambda account: graph.GraphApiState(tenant_id=account),
        graph.create_api_app,
        lambda state: {"client_id": state.client_id, "client_secret": state.client_secret},
        lambda url, secret, account, state: graph.GraphSimulator(url, secret, account_id=account, state=state),
        graph.GraphSimulator.expected_outcome),
    "zoom": PhoneSystem(
        "zoom", "zoom-acct-77", "zoom-secret-token",
        lambda account: zoom.ZoomApiState(account_id=account),
        zoom.create_api_app,
        lambda state: {"client_id": state.client_id, "client_secret": state.client_secret},
        lambda url, secret, account, state: zoom.ZoomSimulator(url, secret, account_id=account, state=state)),
    "dialpad": PhoneSystem(
        "dialpad", "dialpad-company-77", "dialpad-jwt-secret",
        lambda account: dialpad.DialpadApiState(api_keys={"dialpad-api-key"}),
        dialpad.create_api_app,
        lambda state: {"api_key": "dialpad-api-key"},
        lambda url, secret, account, state: dialpad.DialpadSimulator(url, secret, account_id=account, state=state)),
    "vonage": PhoneSystem(
        "vonage", "vbc-account-77", "vonage-signing-key",
        lambda account: vonage.VonageApiState(account_id=account),
        vonage.create_api_app,
        lambda state: {"client_id": state.client_id, "client_secret": state.client_secret,
                       "username": state.username, "password": state.password},
        lambda url, secret, account, state: vonage.VonageSimulator(url, secret, account_id=account, state=state)),
}


@dataclass
class PhoneFakes:
    """The providers' fake APIs, running; one simulator per provider on demand."""

    stack: LocalStack
    firm_id: str
    states: dict[str, Any]
    servers: dict[str, BackgroundServer]

    def webhook_url(self, provider: str) -> str:
        return f"{self.stack.url('ingest')}/webhooks/{provider}/{self.firm_id}"

    def simulator(self, provider: str, secret: str | None = None):
        system = PHONE_SYSTEMS[provider]
        return system.new_simulator(self.webhook_url(provider), secret or system.secret, system.account_id,
                                    self.states[provider])

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()


def start_phone_fakes(stack: LocalStack, firm_id: str, providers: tuple[str, ...] = tuple(PHONE_SYSTEMS)
                      ) -> PhoneFakes:
    states = {name: PHONE_SYSTEMS[name].new_state(PHONE_SYSTEMS[name].account_id) for name in providers}
    servers = {name: BackgroundServer(PHONE_SYSTEMS[name].api_app(states[name]), name=f"fake-{name}").start()
               for name in providers}
    return PhoneFakes(stack, firm_id, states, servers)


async def connect_phone_systems(fakes: PhoneFakes, users: Mapping[str, Mapping[str, str]]) -> None:
    """Onboard the firm with each provider: account, sealed secrets, API URL, users -> attorneys
    (`users[provider]` maps the provider's user ids to billing user ids)."""
    conn = await asyncpg.connect(fakes.stack.database_url)
    try:
        for name, state in fakes.states.items():
            system = PHONE_SYSTEMS[name]
            async with conn.transaction():
                await connect_phone_provider(
                    stack_credentials(conn), conn, firm_id=fakes.firm_id, provider=name,
                    account_id=system.account_id, webhook_secret=system.secret, users=users.get(name, {}),
                    api_base_url=fakes.servers[name].base_url, api_credentials=system.api_credentials(state))
    finally:
        await conn.close()
