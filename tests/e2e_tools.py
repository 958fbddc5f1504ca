"""Tools the end-to-end tests enable on their agents (the server imports this module)."""

from __future__ import annotations

import asyncio

from calls.tools import ToolContext, tool


@tool
def lookup_order(order_id: str, context: ToolContext) -> dict:
    """Look up an order's status.

    Args:
        order_id: The order number the caller gives.
    """
    return {"order_id": order_id, "status": "shipped", "caller": context.from_number}


@tool
def broken_tool(order_id: str) -> dict:
    """A tool whose backend is down."""
    raise ConnectionError(f"inventory service unreachable for {order_id}")


@tool(timeout=0.5)
async def slow_tool() -> dict:
    """A tool that never answers in time."""
    await asyncio.sleep(30)
    return {"late": True}
