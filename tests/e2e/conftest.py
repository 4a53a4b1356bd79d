"""One running pipeline per test module: fake Clio, a private database and topic prefix, and the
four services as real processes."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import pytest

from calltime.demo.stack import FirmSetup, LocalStack, register_firm
from calltime.fakes.clio import FakeClioServer, FakeClioState

FIRM = "firm-e2e"
EXTENSION = "62100001"


@dataclass
class Pipeline:
    stack: LocalStack
    clio: FakeClioState
    firm: FirmSetup
    attorney_id: str
    client_number: str
    matter_id: str


@pytest.fixture(scope="module")
async def pipeline(infrastructure, tmp_path_factory):
    clio_state = FakeClioState(rate_limit=600)
    clio = FakeClioServer(clio_state).start()
    clio_state.add_firm(FIRM, "Harbor & Vale LLP")
    attorney = clio_state.add_user(FIRM, name="Dana Whitfield", rate=Decimal("350.00"),
                                   time_zone="America/Los_Angeles", tokens=["clio-token-e2e"])
    client = clio_state.add_contact(FIRM, name="Marisol Ortega", is_client=True,
                                    phone_numbers=["(415) 555-0142"])
    matter = clio_state.add_matter(FIRM, display_number="00042-Ortega",
                                   description="Ortega lease dispute", client_id=client)
    stack = LocalStack(infrastructure["database"], infrastructure["kafka"],
                       tmp_path_factory.mktemp("stack"))
    await stack.create_database()
    firm = FirmSetup(
        firm_id=FIRM, name="Harbor & Vale LLP", clio_base_url=clio.base_url,
        clio_token="clio-token-e2e", ringcentral_account_id="400100",
        ringcentral_verification_token="rc-verification-e2e", api_key="review-key-e2e",
        extensions={EXTENSION: str(attorney)})
    await register_firm(stack, firm)
    try:
        await stack.start_services()
        yield Pipeline(stack, clio_state, firm, str(attorney), "+14155550142", str(matter))
    finally:
        stack.stop_services()
        clio.stop()
        await stack.drop_database()
