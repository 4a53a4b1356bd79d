"""Which adapter speaks which provider's dialect; the webhook route and the reconciliation job
look adapters up here by the provider name in the URL or the account row."""

from __future__ import annotations

import importlib

from calltime.ingest.providers.model import PhoneProvider

PROVIDERS = ("ringcentral", "graph", "zoom", "dialpad", "vonage")


class UnknownProvider(LookupError):
    pass


def adapter(name: str) -> PhoneProvider:
    if name not in PROVIDERS:
        raise UnknownProvider(f"no phone provider {name!r}; known: {', '.join(PROVIDERS)}")
    return importlib.import_module(f"calltime.ingest.providers.{name}").ADAPTER


def call_log_module(name: str):
    """The provider's pull-side module (`source(account, base_url, credentials, http)`)."""
    if name not in PROVIDERS:
        raise UnknownProvider(f"no phone provider {name!r}; known: {', '.join(PROVIDERS)}")
    return importlib.import_module(f"calltime.ingest.call_logs.{name}")
