"""The HTTP API (SPEC §5 "HTTP"): an aiohttp app embedded in the runtime."""

from lifecycled.web.app import build_app, start_web

__all__ = ["build_app", "start_web"]
