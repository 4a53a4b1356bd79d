"""Topic names, in one place: the five pipeline topics and their dead-letter companions."""

from __future__ import annotations

CALL_ENDED = "call.ended"
CALL_MATCHED = "call.matched"
DRAFT_CREATED = "draft.created"
DRAFT_APPROVED = "draft.approved"
ENTRY_WRITTEN = "entry.written"

PIPELINE = (CALL_ENDED, CALL_MATCHED, DRAFT_CREATED, DRAFT_APPROVED, ENTRY_WRITTEN)


def dead_letter(topic: str) -> str:
    """Where a consumer of `topic` parks a message it could not process, with the reason."""
    return f"{topic}.dlq"


def all_topics() -> tuple[str, ...]:
    return PIPELINE + tuple(dead_letter(topic) for topic in PIPELINE)


def qualified(prefix: str, topic: str) -> str:
    return f"{prefix}{topic}"
