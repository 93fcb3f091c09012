"""Serve a funnel index over HTTP (``mrl serve``): the FastAPI app factory and its uvicorn server.

Needs the ``serve`` extra (``pip install "mrl[serve]"``); importing :mod:`mrl` never requires it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app", "serve"]


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
