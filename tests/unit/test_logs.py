"""Logs are JSON lines that carry the call and firm ids bound around the work."""

from __future__ import annotations

import io
import json
import logging

from calltime.logs import JsonFormatter, bound


def capture() -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("drafts"))
    logger = logging.getLogger(f"test-{id(stream)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, stream


def test_lines_inside_a_bound_block_carry_its_ids_and_lines_after_it_do_not():
    logger, stream = capture()
    with bound(call_id="ringcentral:s-1", firm_id="harbor-vale"):
        with bound(call_id="ringcentral:s-2"):
            logger.info("inner", extra={"review_state": "ready"})
        logger.info("outer")
    logger.info("after")
    inner, outer, after = (json.loads(line) for line in stream.getvalue().splitlines())
    assert inner["call_id"] == "ringcentral:s-2" and inner["firm_id"] == "harbor-vale"
    assert inner["review_state"] == "ready" and inner["service"] == "drafts"
    assert outer["call_id"] == "ringcentral:s-1"
    assert "call_id" not in after and after["msg"] == "after"


def test_exceptions_are_logged_inside_the_json_line():
    logger, stream = capture()
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed")
    line = json.loads(stream.getvalue())
    assert line["level"] == "ERROR" and "ValueError: boom" in line["exc"]
