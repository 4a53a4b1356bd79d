"""Signed, expiring approval links (the one-click approve in the attorney's notification).

A token names the firm and the draft and carries its expiry, signed with HMAC-SHA256 under the
service's signing key. Single use is not the token's job: the draft's state moves from pending
to approved exactly once, so a second use finds it approved and is refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass


class InvalidApprovalLink(ValueError):
    """Why a link cannot approve anything (tampered, expired, malformed)."""


@dataclass(frozen=True)
class ApprovalGrant:
    firm_id: str
    draft_id: str
    expires_at: int  # unix seconds


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(payload: bytes, key: bytes) -> bytes:
    return hmac.new(key, payload, hashlib.sha256).digest()


def sign(grant: ApprovalGrant, key: bytes) -> str:
    payload = json.dumps([grant.firm_id, grant.draft_id, grant.expires_at],
                         separators=(",", ":")).encode()
    return f"{_b64(payload)}.{_b64(_signature(payload, key))}"


def verify(token: str, key: bytes, *, now: int) -> ApprovalGrant:
    try:
        payload_text, signature_text = token.split(".")
        payload, signature = _unb64(payload_text), _unb64(signature_text)
    except ValueError as exc:
        raise InvalidApprovalLink("malformed approval link") from exc
    if not hmac.compare_digest(signature, _signature(payload, key)):
        raise InvalidApprovalLink("approval link signature does not match")
    try:
        firm_id, draft_id, expires_at = json.loads(payload)
        if not (isinstance(firm_id, str) and isinstance(draft_id, str)
                and isinstance(expires_at, int)):
            raise ValueError("wrong field types")
    except (ValueError, TypeError) as exc:
        raise InvalidApprovalLink("malformed approval link") from exc
    if now >= expires_at:
        raise InvalidApprovalLink("approval link has expired")
    return ApprovalGrant(firm_id, draft_id, expires_at)
