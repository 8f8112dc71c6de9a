"""No API key reaches a log line or an error body: aiohttp's own parser errors included."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from shared.logging import REDACTED, RedactingFilter, redact_text
from tests.conftest import ServiceFactory
from tests.wire import Wire

SECRET = "osk_SecretPartThatMustNeverShow0123456789abcd"
PLAIN_SECRET = "NotPrefixedButStillSecret0123456789abcdefXYZ"  # a bootstrap key need not start osk_

# Each a header line aiohttp's parser refuses, with the key in it.
MALFORMED: dict[str, bytes] = {
    "control character": f"Authorization: Bearer {SECRET}".encode() + b"\x01tail",
    "DEL": f"Authorization: Bearer {SECRET}".encode() + b"\x7f",
    "bare newline then fold": f"Authorization: Bearer {SECRET}\r\n continued".encode(),
    "space before colon": f"Authorization : Bearer {SECRET}".encode(),
    "NUL in the name": f"Authori\x00zation: Bearer {SECRET}".encode(),
    "huge value": f"Authorization: Bearer {SECRET}".encode() + b"A" * 40_000,
    "unprefixed key, control character": f"Authorization: Bearer {PLAIN_SECRET}".encode() + b"\x02",
    "unprefixed key, huge": f"Authorization: Bearer {PLAIN_SECRET}".encode() + b"B" * 40_000,
}


def _leaks(text: str) -> bool:
    return any(part in text for part in (SECRET, SECRET[4:], PLAIN_SECRET, "SecretPart", "StillSecret"))


@pytest.mark.parametrize("case", list(MALFORMED))
async def test_a_malformed_authorization_header_is_answered_and_logged_without_the_key(
        service: ServiceFactory, case: str, caplog: pytest.LogCaptureFixture) -> None:
    api = await service("inventory")
    caplog.set_level(logging.DEBUG)
    wire = await Wire.open(api)
    try:
        with capture_logs() as events:
            await wire.send(b"GET /v1/locations HTTP/1.1\r\nHost: x\r\n" + MALFORMED[case] + b"\r\n\r\n")
            answer = await wire.answer()
    finally:
        wire.close()
    assert answer.status == 400, answer
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["type"].endswith("/bad-request")
    assert not _leaks(answer.body.decode("latin-1")), answer.body
    assert not _leaks(caplog.text), caplog.text
    assert not _leaks(repr(events)), events
    assert any(e.get("status") == 400 for e in events), "the refusal is still logged, without its content"


def test_the_configured_pipeline_redacts_keys_in_messages_fields_and_tracebacks() -> None:
    processors = structlog.get_config()["processors"]
    logger = structlog.wrap_logger(structlog.ReturnLogger(), processors=processors)
    try:
        raise ValueError(f"bad header b'Authorization: Bearer {SECRET}'")
    except ValueError:
        line = logger.error(f"saw {SECRET}", headers={"Authorization": f"Bearer {PLAIN_SECRET}"},
                            raw=f"Bearer {PLAIN_SECRET}".encode(), exc_info=True)
    assert not _leaks(str(line)), line
    assert REDACTED in str(line)


def test_standard_library_records_are_redacted_message_arguments_and_traceback() -> None:
    record: dict[str, Any] = {}

    class Keep(logging.Handler):
        def emit(self, r: logging.LogRecord) -> None:
            record["text"] = logging.Formatter().format(r)

    logger = logging.getLogger("tests.redaction")
    logger.addFilter(RedactingFilter())
    logger.addHandler(Keep())
    logger.propagate = False
    try:
        raise RuntimeError(f"Got more than 8190 bytes when reading: b'Bearer {PLAIN_SECRET}...'")
    except RuntimeError:
        logger.exception("Error handling request from %s with %s", "127.0.0.1", f"Authorization: {SECRET}")
    assert "127.0.0.1" in record["text"]
    assert not _leaks(record["text"]), record["text"]


@pytest.mark.parametrize(("text", "expected"), [
    (f"Authorization: Bearer {PLAIN_SECRET}", f"Authorization: {REDACTED}"),
    (f"authorization={PLAIN_SECRET} next", f"authorization={REDACTED}"),
    (f"token Bearer {PLAIN_SECRET} end", f"token Bearer {REDACTED} end"),
    (f"key {SECRET}.", f"key osk_{REDACTED}."),
    ("nothing secret: sku TEE-1 at store-a", "nothing secret: sku TEE-1 at store-a"),
])
def test_redact_text_blanks_header_values_bearer_tokens_and_osk_keys(text: str, expected: str) -> None:
    assert redact_text(text) == expected
