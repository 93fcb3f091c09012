"""Declared argument checks, used by the library and the CLI instead of hand-written ones.

Each check returns the (normalised) value or raises :class:`~mrl.errors.MRLError` whose message
names the argument, the value and what is allowed, as scikit-learn's ``_parameter_constraints``
do. :func:`click_check` turns any of them into a click callback, so a bad flag is reported as one
``Error: --flag ...`` line (exit status 1) before a command touches the disk.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from mrl.errors import MRLError

# Seeds feed torch.manual_seed, numpy generators and derived seeds (seed * 1_000_003 + epoch), so
# they stay far below int64 overflow; 2**32 - 1 is also numpy's legacy limit.
SEED_MAX = 2**32 - 1


def _bounds(min: float | None, max: float | None, min_open: bool = False, max_open: bool = False) -> str:
    parts = []
    if min is not None:
        parts.append(f"> {min}" if min_open else f">= {min}")
    if max is not None:
        parts.append(f"< {max}" if max_open else f"<= {max}")
    return " and ".join(parts)


def check_int(name: str, value: Any, min: int | None = None, max: int | None = None) -> int:
    """``value`` as an int within [min, max]; bools and floats are refused.

    Example:
        >>> check_int("batch-size", 32, min=1)
        32
        >>> check_int("batch-size", 0, min=1)
        Traceback (most recent call last):
        ...
        mrl.errors.MRLError: batch-size must be an integer >= 1, got 0
    """
    allowed = "an integer" + (f" {_bounds(min, max)}" if min is not None or max is not None else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise MRLError(f"{name} must be {allowed}, got {value!r}")
    value = int(value)
    if (min is not None and value < min) or (max is not None and value > max):
        raise MRLError(f"{name} must be {allowed}, got {value}")
    return value


def check_float(
    name: str, value: Any, min: float | None = None, max: float | None = None, finite: bool = True,
    min_open: bool = False, max_open: bool = False,
) -> float:
    """``value`` as a float within the bounds (``*_open``: strict); NaN always and inf by default refused.

    Example:
        >>> check_float("lr", 1e-3, min=0, min_open=True)
        0.001
        >>> check_float("temperature", float("nan"), min=0, min_open=True)
        Traceback (most recent call last):
        ...
        mrl.errors.MRLError: temperature must be a finite number > 0, got nan
    """
    kind = "a finite number" if finite else "a number"
    bounds = _bounds(min, max, min_open, max_open)
    allowed = kind + (f" {bounds}" if bounds else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise MRLError(f"{name} must be {allowed}, got {value!r}")
    value = float(value)
    if math.isnan(value) or (finite and math.isinf(value)):
        raise MRLError(f"{name} must be {allowed}, got {value}")
    if min is not None and (value <= min if min_open else value < min):
        raise MRLError(f"{name} must be {allowed}, got {value}")
    if max is not None and (value >= max if max_open else value > max):
        raise MRLError(f"{name} must be {allowed}, got {value}")
    return value


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """``value`` if it is one of ``choices``.

    Example:
        >>> check_choice("metric", "l1", ("cosine", "ip", "l2"))
        Traceback (most recent call last):
        ...
        mrl.errors.MRLError: metric must be one of cosine, ip, l2, got 'l1'
    """
    choices = tuple(choices)
    if value not in choices:
        raise MRLError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")
    return value


def check_ascending(
    name: str, seq: Sequence[Any], min: float | None = None, max: float | None = None,
    element: Callable[..., Any] = check_int, each: str | None = None, **bounds: Any,
) -> list:
    """A non-empty, strictly ascending list whose every entry passes ``element`` within [min, max].

    Args:
        name: the list's name in messages.
        seq: the values.
        min, max: bounds of every entry.
        element: the check of one entry: :func:`check_int` (default) or :func:`check_float`.
        each: an entry's name in messages (default "every size of NAME").
        **bounds: more arguments of ``element`` (``min_open=True``).

    Example:
        >>> check_ascending("nesting", [8, 16], min=1, max=16)
        [8, 16]
        >>> check_ascending("nesting", [16, 8])
        Traceback (most recent call last):
        ...
        mrl.errors.MRLError: nesting must be strictly ascending, got [16, 8]
        >>> check_ascending("widths", [0.5, 1], min=0, max=1, element=check_float, each="every width", min_open=True)
        [0.5, 1.0]
    """
    if isinstance(seq, (str, bytes)) or not isinstance(seq, Sequence) or len(seq) == 0:
        kind = "integers" if element is check_int else "numbers"
        raise MRLError(f"{name} must be a non-empty list of {kind}, got {seq!r}")
    values = [element(each or f"every size of {name}", v, min=min, max=max, **bounds) for v in seq]
    if any(b <= a for a, b in zip(values, values[1:])):
        raise MRLError(f"{name} must be strictly ascending, got {values}")
    return values


def split_numbers(text: str, convert: Callable[[str], Any], message: str) -> list:
    """``convert`` of every non-blank comma-separated part of ``text``; MRLError(message) if one fails.

    Example:
        >>> split_numbers("8, 16,", int, "sizes must be comma-separated integers")
        [8, 16]
    """
    try:
        return [convert(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise MRLError(message) from None


def check_seed(name: str, value: Any) -> int:
    """A random seed in [0, 2**32 - 1]."""
    return check_int(name, value, min=0, max=SEED_MAX)


def click_check(check: Callable[..., Any], **kwargs: Any) -> Callable[[Any, Any, Any], Any]:
    """A click option callback running ``check("--flag", value, **kwargs)``; None passes through.

    The MRLError it raises surfaces as one ``Error: ...`` line and exit status 1.

    Example:
        >>> import click
        >>> option = click.option("--top-k", type=int, callback=click_check(check_int, min=1))
    """

    def callback(ctx: Any, param: Any, value: Any) -> Any:
        if value is None:
            return None
        flag = param.opts[0] if getattr(param, "opts", None) else param.name
        if isinstance(value, tuple):  # multiple=True options
            return tuple(check(flag, v, **kwargs) for v in value)
        return check(flag, value, **kwargs)

    return callback
