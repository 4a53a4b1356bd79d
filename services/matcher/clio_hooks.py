"""Clio's webhooks keep a Clio firm's directory fresh between periodic syncs (billing-apis.md §1.9).

The receiver (`POST /billing-webhooks/clio/{firm_id}`) answers the creation handshake, checks each
delivery's `X-Hook-Signature` over the raw body, then applies it: a deletion at once (an incremental
sync cannot see one), anything else by a debounced incremental sync of that firm. A sync that fails
loses nothing: the periodic sync reads everything changed since the last successful one.

The subscription manager, run with the periodic sync, keeps one contact and one matter webhook per
firm alive: it creates missing ones, renews those near their (at most 31-day) expiry, and activates
any whose handshake we missed. Each webhook's shared secret is kept sealed in the credential store
under `clio.webhook`, never logged.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import asyncpg
import httpx
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from calltime.billing.clio import ClioClient
from calltime.billing.clio_webhooks import (
    SECRET_HEADER,
    SIGNATURE_HEADER,
    WebhookPayloadError,
    handshake_secret,
    parse_event,
    renewal_due,
    verify_signature,
)
from calltime.billing.connect import BillingClients
from calltime.billing.errors import BillingError
from calltime.credentials import CredentialCorrupt, CredentialStore, MissingCredential
from calltime.firms import Firm, UnknownFirm, load_firm
from calltime.matcher import directory
from calltime.matcher.sync import SyncReport, sync_firm

log = logging.getLogger(__name__)

CREDENTIAL = "clio.webhook"
PATH = "/billing-webhooks/clio/{firm_id}"
# `fields` are also what Clio watches for `updated` (§1.9): exactly what the directory keeps.
SUBSCRIPTIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "contact": (("created", "updated", "deleted"),
                "id,etag,name,is_client,primary_phone_number,secondary_phone_number,phone_numbers{number}"),
    "matter": (("created", "updated", "deleted", "matter_opened", "matter_pended", "matter_closed"),
               "id,etag,display_number,description,status,client{id}"),
}
# A day short of Clio's 31-day maximum, so a clock ahead of Clio's is not refused.
LIFETIME = timedelta(days=30)
RENEW_MARGIN = timedelta(days=3)
# A handshake with a secret we do not hold is checked against Clio's own list at most this often per
# firm, so unsigned junk cannot spend the firm's API allowance.
LOOKUP_INTERVAL_SECONDS = 10.0
_LOCK_PREFIX = "calltime.clio-webhooks:"


@dataclass(frozen=True)
class StoredHook:
    model: str
    secret: str = field(repr=False)


@dataclass(frozen=True)
class SubscriptionReport:
    firm_id: str
    created: tuple[int, ...]
    renewed: tuple[int, ...]
    activated: tuple[int, ...]


class DirectoryRefresher:
    """One incremental sync per firm at a time, started `debounce` seconds after the first change so a
    burst of deliveries costs one sync; a change arriving while a sync runs earns exactly one more."""

    def __init__(self, sync: Callable[[str], Awaitable[object]], debounce: float = 1.0) -> None:
        self._sync = sync
        self._debounce = debounce
        self._dirty: set[str] = set()
        self._tasks: dict[str, asyncio.Task] = {}
        self.completed = 0
        self.failed = 0

    def request(self, firm_id: str) -> None:
        self._dirty.add(firm_id)
        if firm_id not in self._tasks:
            self._tasks[firm_id] = asyncio.create_task(self._run(firm_id), name=f"directory-refresh-{firm_id}")

    async def _run(self, firm_id: str) -> None:
        try:
            while firm_id in self._dirty:
                await asyncio.sleep(self._debounce)
                self._dirty.discard(firm_id)
                try:
                    await self._sync(firm_id)
                    self.completed += 1
                except Exception as exc:  # noqa: BLE001 - the periodic sync reads this change later
                    self.failed += 1
                    log.warning("webhook-triggered directory sync failed; the periodic sync will catch up",
                                extra={"firm_id": firm_id, "error": repr(exc)})
        finally:
            self._tasks.pop(firm_id, None)

    async def idle(self) -> None:
        """Until no sync is pending or running (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)

    async def aclose(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)


class ClioHooks:
    """The receiver and the subscription manager of one matcher process."""

    def __init__(self, pool: asyncpg.Pool, credentials: CredentialStore, clients: BillingClients, *,
                 public_url: str | None = None, debounce: float = 1.0,
                 renew_margin: timedelta = RENEW_MARGIN) -> None:
        if public_url and httpx.URL(public_url).scheme != "https":
            raise ValueError("the matcher's public URL must be https: Clio delivers webhooks to https only")
        self.pool = pool
        self.credentials = credentials
        self.clients = clients
        self.public_url = public_url.rstrip("/") if public_url else None
        self.renew_margin = renew_margin
        self.refresher = DirectoryRefresher(self.sync_directory, debounce)
        self._looked_up: dict[str, float] = {}

    def url(self, firm_id: str) -> str:
        if self.public_url is None:
            raise ValueError("no public URL is configured for Clio webhooks")
        return self.public_url + PATH.format(firm_id=firm_id)

    async def sync_directory(self, firm_id: str) -> SyncReport:
        firm = await load_firm(self.pool, firm_id)
        return await sync_firm(self.pool, await self.clients.for_firm(firm), firm_id, firm.phone_region)

    async def aclose(self) -> None:
        await self.refresher.aclose()

    # -- receiving ------------------------------------------------------------------------------------------------

    async def receive(self, firm_id: str, headers: Mapping[str, str], raw_body: bytes) -> JSONResponse:
        """Clio's POST, answered fast: a handshake is echoed, a delivery is verified and applied."""
        try:
            firm = await load_firm(self.pool, firm_id)
        except UnknownFirm:
            return _answer(404, "no such firm")
        if firm.billing_system != "clio":
            return _answer(404, "this firm's billing system is not Clio")
        hooks = await self.stored(firm_id)
        secret = handshake_secret(headers)
        if secret is not None:
            return await self._handshake(firm, secret, hooks)
        signature = next((v for k, v in headers.items() if k.lower() == SIGNATURE_HEADER.lower()), None)
        # Verified before anything is parsed; every secret the firm holds is tried, since which webhook
        # sent the body is itself in the unverified body.
        signers = {hook_id for hook_id, hook in hooks.items() if verify_signature(hook.secret, raw_body, signature)}
        if not signers:
            log.warning("clio webhook refused: bad or missing signature", extra={"firm_id": firm_id})
            return _answer(401, "missing or invalid X-Hook-Signature")
        try:
            event = parse_event(raw_body, models={hook_id: hook.model for hook_id, hook in hooks.items()})
        except WebhookPayloadError as exc:
            return _answer(400, str(exc))
        if event.webhook_id not in signers:
            return _answer(401, "the signature is not that of the webhook named in the body")
        if event.model not in SUBSCRIPTIONS:
            return _answer(200, "ignored")
        resource, record_id = event.model, str(event.id)
        # Applied before the 2xx (a database failure answers 503 and Clio delivers again): a deletion
        # is nowhere else to be learnt.
        async with self.pool.acquire() as conn:
            if event.event == "deleted":
                await directory.record_deletion(conn, firm_id, resource, record_id)
            else:
                await directory.forget_deletion(conn, firm_id, resource, record_id)
        if event.event != "deleted":
            self.refresher.request(firm_id)
        log.info("clio webhook accepted", extra={"firm_id": firm_id, "webhook_id": event.webhook_id,
                                                  "event": event.event, "model": resource, "record_id": record_id})
        return _answer(200, "accepted")

    async def _handshake(self, firm: Firm, secret: str, hooks: Mapping[int, StoredHook]) -> JSONResponse:
        # Echoing just any X-Hook-Secret would let anyone who can reach us plant a secret and then sign
        # forged deletions with it: only a secret Clio itself lists for this firm is echoed.
        known = any(hmac.compare_digest(hook.secret.encode(), secret.encode()) for hook in hooks.values())
        if not known:
            known = await self._secret_listed_by_clio(firm, secret)
        if not known:
            log.warning("clio webhook handshake refused: unknown secret", extra={"firm_id": firm.firm_id})
            return _answer(401, "unknown webhook secret")
        log.info("clio webhook handshake answered", extra={"firm_id": firm.firm_id})
        return JSONResponse({"status": "ok"}, headers={SECRET_HEADER: secret})

    async def _secret_listed_by_clio(self, firm: Firm, secret: str) -> bool:
        """The handshake can arrive before our create call has its answer; Clio's list then tells."""
        last = self._looked_up.get(firm.firm_id)
        if last is not None and time.monotonic() - last < LOOKUP_INTERVAL_SECONDS:
            return False
        self._looked_up[firm.firm_id] = time.monotonic()
        try:
            listed = await (await self._clio(firm)).list_webhooks()
        except Exception as exc:  # noqa: BLE001 - unanswered, the webhook stays pending; the manager activates it
            log.warning("clio webhook handshake: could not list webhooks",
                        extra={"firm_id": firm.firm_id, "error": repr(exc)})
            return False
        # Every webhook of ours Clio lists is learnt, so the handshake of its sibling (contact and
        # matter are created together) is answered from the store.
        path = PATH.format(firm_id=firm.firm_id)
        ours = {w.id: StoredHook(w.model, w.shared_secret) for w in listed
                if w.shared_secret and httpx.URL(w.url).path == path}
        if not any(hmac.compare_digest(h.secret.encode(), secret.encode()) for h in ours.values()):
            return False
        await self._save(firm.firm_id, ours)
        return True

    # -- subscriptions --------------------------------------------------------------------------------------------

    async def ensure_subscriptions(self, firm_id: str, *, now: datetime | None = None) -> SubscriptionReport | None:
        """Create, renew or activate this firm's webhooks as needed; None when webhooks are off for it."""
        if self.public_url is None:
            return None
        firm = await load_firm(self.pool, firm_id)
        if firm.billing_system != "clio":
            return None
        # Replicas (`--scale matcher=3`) run this on the same timer: one at a time per firm, or two
        # could each find a webhook missing and both create one.
        async with self.pool.acquire() as conn:
            if not await conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", _LOCK_PREFIX + firm_id):
                return SubscriptionReport(firm_id, (), (), ())
            try:
                return await self._ensure(firm, now or datetime.now(timezone.utc))
            finally:
                await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", _LOCK_PREFIX + firm_id)

    async def _ensure(self, firm: Firm, now: datetime) -> SubscriptionReport:
        firm_id = firm.firm_id
        client = await self._clio(firm)
        url = self.url(firm_id)
        listed = [w for w in await client.list_webhooks() if w.url == url]
        stored = await self.stored(firm_id)
        # Clio lists each webhook's secret: a create answer we never saw still leaves us able to verify.
        known = {w.id: StoredHook(w.model, w.shared_secret) if w.shared_secret else stored[w.id]
                 for w in listed if w.shared_secret or w.id in stored}
        await self._save(firm_id, known, keep_only=set(known))
        created: list[int] = []
        renewed: list[int] = []
        activated: list[int] = []
        for model, (events, fields) in SUBSCRIPTIONS.items():
            alive = False
            # A suspended webhook is left to lapse; a new one replaces it.
            for webhook in (w for w in listed if w.model == model and w.status != "suspended"):
                try:
                    if renewal_due(webhook, now, margin=self.renew_margin):
                        webhook = await client.renew_webhook(webhook.id, now + LIFETIME)
                        renewed.append(webhook.id)
                    if webhook.status == "pending" and webhook.id in known:
                        # Our endpoint missed the handshake (down, or the secret not yet stored): finish it.
                        await client.activate_webhook(webhook.id, known[webhook.id].secret)
                        activated.append(webhook.id)
                    alive = True
                except BillingError as exc:
                    log.warning("clio webhook renewal failed", extra={
                        "firm_id": firm_id, "webhook_id": webhook.id, "error": repr(exc)})
                    alive = alive or (webhook.status == "enabled" and webhook.expires_at is not None
                                      and webhook.expires_at > now)
            if not alive:
                webhook = await client.create_webhook(url, model, events, fields, expires_at=now + LIFETIME)
                if webhook.shared_secret:
                    # Stored at once: the handshake follows right behind the answer.
                    await self._save(firm_id, {webhook.id: StoredHook(model, webhook.shared_secret)})
                created.append(webhook.id)
        report = SubscriptionReport(firm_id, tuple(created), tuple(renewed), tuple(activated))
        if created or renewed or activated:
            log.info("clio webhooks maintained", extra={
                "firm_id": firm_id, "webhooks_created": report.created, "webhooks_renewed": report.renewed,
                "webhooks_activated": report.activated})
        return report

    async def _clio(self, firm: Firm) -> ClioClient:
        client = await self.clients.for_firm(firm)
        if not isinstance(client, ClioClient):
            raise TypeError(f"firm {firm.firm_id!r} has no Clio client")
        return client

    # -- the sealed secrets ---------------------------------------------------------------------------------------

    async def stored(self, firm_id: str) -> dict[int, StoredHook]:
        try:
            value = (await self.credentials.get(firm_id, CREDENTIAL)).value
        except MissingCredential:
            return {}
        return _hooks_from(value)

    async def _save(self, firm_id: str, add: Mapping[int, StoredHook], *, keep_only: set[int] | None = None) -> None:
        """Merge into the stored secrets under a row lock, so the receiver and the manager (and other
        processes) never overwrite each other's additions; `keep_only` drops webhooks Clio no longer lists."""
        def merged(current: Mapping[int, StoredHook]) -> dict[int, StoredHook]:
            return {k: v for k, v in current.items() if keep_only is None or k in keep_only} | dict(add)

        try:
            async with self.credentials.exclusive(firm_id, CREDENTIAL) as (conn, credential):
                current = _hooks_from(credential.value)
                if merged(current) != current:
                    await self.credentials.put(firm_id, CREDENTIAL, _hooks_value(merged(current)), conn=conn)
                return
        except MissingCredential:
            pass
        if add:
            await self.credentials.put(firm_id, CREDENTIAL, _hooks_value(merged({})))


def _hooks_from(value: Mapping) -> dict[int, StoredHook]:
    return {int(k): StoredHook(v["model"], v["secret"]) for k, v in (value.get("webhooks") or {}).items()}


def _hooks_value(hooks: Mapping[int, StoredHook]) -> dict:
    return {"webhooks": {str(k): {"model": v.model, "secret": v.secret} for k, v in hooks.items()}}


def _answer(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


def webhook_router() -> APIRouter:
    router = APIRouter(tags=["directory"])

    @router.post(PATH)
    async def clio_webhook(firm_id: str, request: Request) -> JSONResponse:
        hooks: ClioHooks | None = getattr(request.app.state, "clio_hooks", None)
        if hooks is None:
            return _answer(503, "starting up")
        body = await request.body()
        try:
            return await hooks.receive(firm_id, request.headers, body)
        except (asyncpg.PostgresError, OSError, CredentialCorrupt) as exc:
            # Unanswered 2xx means Clio delivers it again later; nothing is lost by refusing now.
            log.warning("clio webhook not processed", extra={"firm_id": firm_id, "error": repr(exc)})
            return _answer(503, "temporarily unable to process; deliver again later")

    return router
