"""Errors a billing adapter raises, classified by what the caller may safely do next."""

from __future__ import annotations


class BillingError(Exception):
    """Base of every billing-adapter error; `status` is the HTTP status when there was one."""

    def __init__(self, message: str, *, status: int | None = None, error_type: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type


class TransientBillingError(BillingError):
    """Nothing was written: 429 after retries, a failed read, or a connection error before sending. Retry later."""


class AmbiguousWriteError(TransientBillingError):
    """A write may have reached the billing system without an answer; look it up before any retry."""


class PermanentBillingError(BillingError):
    """The billing system refused the request (validation, missing matter, permission); retrying will not help."""


class AuthenticationError(PermanentBillingError):
    """The access token was missing, expired, revoked or otherwise rejected (HTTP 401)."""


class ApiVersionMismatch(PermanentBillingError):
    """The API version was rejected, or the answer was not produced under the version we asked for.

    `resource_id` is set when a write succeeded but its echo was wrong: the record exists and needs a human look.
    """

    def __init__(
        self,
        message: str,
        *,
        sent: str,
        received: str | None,
        status: int | None = None,
        resource_id: str | None = None,
    ) -> None:
        super().__init__(message, status=status, error_type="ApiVersionMismatch")
        self.sent = sent
        self.received = received
        self.resource_id = resource_id
