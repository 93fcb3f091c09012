"""mrl.validation: every check accepts what it allows and names argument, value and rule otherwise."""

from __future__ import annotations

import math

import click
import pytest
from click.testing import CliRunner

from mrl.errors import MRLError
from mrl.validation import (
    SEED_MAX, check_ascending, check_choice, check_float, check_int, check_seed, click_check,
)


def test_check_int_accepts_integers_within_bounds():
    import numpy as np

    assert check_int("n", 3, min=1, max=3) == 3
    assert check_int("n", np.int64(5)) == 5 and type(check_int("n", np.int64(5))) is int


@pytest.mark.parametrize("value", [True, 1.0, "3", None, 0, 11])
def test_check_int_refuses(value):
    with pytest.raises(MRLError, match=r"^n must be an integer >= 1 and <= 10, got"):
        check_int("n", value, min=1, max=10)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 0.0, -1.0, "0.1", True])
def test_check_float_refuses_non_finite_and_out_of_range(value):
    with pytest.raises(MRLError, match=r"^lr must be a finite number > 0, got"):
        check_float("lr", value, min=0, min_open=True)


def test_check_float_bounds_and_infinity():
    assert check_float("p", 1, min=0, max=1) == 1.0
    assert check_float("budget", math.inf, min=0, finite=False) == math.inf
    with pytest.raises(MRLError, match=r"must be a number >= 0, got nan"):
        check_float("budget", math.nan, min=0, finite=False)
    with pytest.raises(MRLError, match=r"must be a finite number >= 0 and < 1, got 1.0"):
        check_float("fraction", 1.0, min=0, max=1, max_open=True)


def test_check_choice_and_ascending():
    assert check_choice("metric", "ip", ("cosine", "ip")) == "ip"
    with pytest.raises(MRLError, match=r"metric must be one of cosine, ip, got 'l1'"):
        check_choice("metric", "l1", ("cosine", "ip"))
    assert check_ascending("nesting", (8, 16, 32), min=1, max=32) == [8, 16, 32]
    for bad, message in (([], "non-empty"), ("8,16", "non-empty"), ([8, 8], "strictly ascending"),
                         ([8, 64], r"<= 32, got 64"), ([0, 8], r">= 1 and <= 32, got 0")):
        with pytest.raises(MRLError, match=message):
            check_ascending("nesting", bad, min=1, max=32)


def test_check_seed_range():
    assert check_seed("seed", SEED_MAX) == SEED_MAX
    for bad in (-1, SEED_MAX + 1, 2**64):
        with pytest.raises(MRLError, match=r"seed must be an integer >= 0 and <= 4294967295"):
            check_seed("seed", bad)


def test_click_check_gives_one_error_line_and_exit_1():
    from mrl.cli import _Group

    @click.group(cls=_Group)
    def group():
        pass

    @group.command("run")
    @click.option("--top-k", type=int, default=10, callback=click_check(check_int, min=1))
    def run(top_k):
        click.echo(f"k={top_k}")

    runner = CliRunner()
    assert runner.invoke(group, ["run", "--top-k", "3"]).output == "k=3\n"
    result = runner.invoke(group, ["run", "--top-k", "0"])
    assert result.exit_code == 1
    assert result.output == "Error: --top-k must be an integer >= 1, got 0\n"


@pytest.mark.parametrize(("bad", "match"), [
    ([0.5, 0.25, 1], r"^widths must be strictly ascending, got \[0.5, 0.25, 1.0\]$"),
    ([0.5, 0.5], r"^widths must be strictly ascending, got \[0.5, 0.5\]$"),
    ([0, 1], r"^every width must be a finite number > 0 and <= 1, got 0.0$"),
    ([0.5, math.inf], r"^every width must be a finite number > 0 and <= 1, got inf$"),
    ([0.5, True], r"^every width must be a finite number > 0 and <= 1, got True$"),
    ([], r"^widths must be a non-empty list of numbers, got \[\]$"),
])
def test_ascending_fractions_share_the_integer_checker(bad, match):
    """One ascending checker for integer nesting sizes and fractional widths (models.widths uses it)."""
    assert check_ascending("widths", [0.25, 0.5, 1], min=0, max=1, element=check_float, each="every width",
                           min_open=True) == [0.25, 0.5, 1.0]
    with pytest.raises(MRLError, match=match):
        check_ascending("widths", bad, min=0, max=1, element=check_float, each="every width", min_open=True)
