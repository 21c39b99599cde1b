"""Deferral: put a message back with a delay without consuming a retry, bounded by a total wait."""

from __future__ import annotations

import logging
from typing import Any, NoReturn

from dramatiq.middleware import SkipMessage

from actors import attempt

logger = logging.getLogger(__name__)

#: The message options that carry a wait: since when (epoch ms), and how many deferrals so far.
WAITING_SINCE, DEFERRALS = "deferred_since_ms", "deferrals"


def defer(
    broker: Any,
    message: Any,
    *,
    delay_ms: int,
    max_wait_ms: int,
    status: str,
    detail: str,
    free_until_ms: int = 0,
) -> NoReturn:
    """Re-enqueue a copy of `message` in `delay_ms` and skip this delivery.

    Past `max_wait_ms` of waiting the message is failed instead: RabbitMQ dead-letters it to
    `<queue>.XQ`, where it can be inspected and replayed. The wait is counted from the message's
    first deferral since it last claimed its run (`Dedup` clears the stamp on a claim), and not
    before `free_until_ms`. Always raises SkipMessage.
    """
    state = attempt.of(broker, message)
    since_ms = max(int(message.options.get(WAITING_SINCE) or attempt.now_ms()), free_until_ms)
    if attempt.now_ms() - since_ms > max_wait_ms:
        logger.warning(
            "Message %r waited more than %d ms; dead-lettering it.", message.message_id, max_wait_ms
        )
        message.fail()
        state.verdict = ("dead", f"waited more than {max_wait_ms} ms: {detail}")
        raise SkipMessage(detail)
    deferrals = int(message.options.get(DEFERRALS, 0)) + 1
    copy = message.copy(options={WAITING_SINCE: since_ms, DEFERRALS: deferrals})
    try:
        broker.enqueue(copy, delay=delay_ms)
    except Exception as e:
        # Neither store nor broker will take it back: the dead letter queue keeps it safe.
        logger.error("Could not defer message %r (%s); dead-lettering it.", message.message_id, e)
        message.fail()
        state.verdict = ("dead", f"could not defer: {e}; {detail}")
        raise SkipMessage(detail) from e
    logger.info("Deferred message %r by %d ms: %s", message.message_id, delay_ms, detail)
    state.verdict = (status, detail)
    raise SkipMessage(detail)
