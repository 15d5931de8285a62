"""Serving a plan and checking its SLOs: routing, admission, a simulator, a load generator and a
Ray Serve application.

The pure parts (`router`, `policy`, `simulator`, `stats`) import neither Ray nor an HTTP client, so
they run and are tested anywhere; `app` imports Ray and `loadgen` imports aiohttp only when used.
"""
