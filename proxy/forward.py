"""Every other /v1/ path: sent to the dialect's upstream as it came, relayed as it is answered."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.responses import Response

from .incoming import Incoming
from .observability.record import RequestRecord
from .outgoing import Slot, send
from .upstream import relay

if TYPE_CHECKING:   # the gateway calls this module
    from .gateway import Gateway


async def forward(gateway: Gateway, request: Incoming, body: bytes, record: RequestRecord,
                  slot: Slot | None) -> Response:
    target = gateway.routes.route(record.dialect, None)
    response = await send(gateway.client, record, target, request, body or None, slot,
                          gateway.config.server.slot_timeout)
    return await relay(response, [], None, record)
