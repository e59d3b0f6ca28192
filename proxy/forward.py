"""Every other /v1/ path: sent to the dialect's upstream as it came, relayed as it is answered."""

from __future__ import annotations

from starlette.responses import Response

from .context import Context
from .dialects import get_dialect
from .incoming import Incoming
from .observability.record import RequestRecord
from .outgoing import Slot, send
from .upstream import relay


async def forward(context: Context, request: Incoming, body: bytes, record: RequestRecord,
                  slot: Slot | None) -> Response:
    target = context.routes.route(get_dialect(record.dialect).upstream, None)
    response = await send(context.client, record, target, request, body or None, slot,
                          context.config.server.slot_timeout, context.routes.fallbacks(target, None))
    return await relay(response, [], None, record)
