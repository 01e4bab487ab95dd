"""argparse ``type=`` converters shared by the worker CLI and the admin verbs."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def number(kind: type[int] | type[float], *, minimum: float, what: str) -> Callable[[str], float]:
    """A converter that accepts a finite ``kind`` >= ``minimum`` and says what it wanted."""
    wanted = f"{what} >= {minimum:g}"

    def convert(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        if not math.isfinite(value) or value < minimum:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
        return value

    convert.__name__ = f"{kind.__name__} >= {minimum:g}"
    return convert


positive_int = number(int, minimum=1, what="a whole number")
non_negative_int = number(int, minimum=0, what="a whole number")
non_negative_seconds = number(float, minimum=0, what="a number of seconds")
