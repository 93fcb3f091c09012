"""Serve a funnel index over HTTP (``mrl serve``): the FastAPI app factory and its uvicorn server.

Needs the ``serve`` extra (``pip install "mrl[serve]"``); importing :mod:`mrl` never requires it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DEFAULT_MAX_CANDIDATES", "create_app", "serve"]

# Candidates one search request may ask for: queries x the funnel's first shortlist length (every
# later stage keeps fewer, k included). A request's memory grows with it (ids, scores and gathered
# rows per candidate, then the JSON of Q x k results): 2^21 is 1,000 queries with 2,048 candidates
# each, or 10,000 with 200. Unbounded, a 2 MB .npy body of 8,000 queries at k 3,000 asked for 24M
# candidates and took the server from 0.6 to 3.1 GB.
DEFAULT_MAX_CANDIDATES = 1 << 21


def __getattr__(name: str) -> Any:
    if name == "create_app":
        try:
            from mrl.serve.app import create_app
        except ImportError as exc:
            from mrl.errors import MRLError

            raise MRLError(f"serving needs {exc.name}: pip install \"mrl[serve]\"") from None
        return create_app
    if name == "serve":
        from mrl.serve.server import serve

        return serve
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
