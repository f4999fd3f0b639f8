"""sim.limits: the one place the ranges live, and the wording every check uses for them."""
import pytest

from sim import limits
from sim.limits import Range, parse_grid


def test_ranges_word_what_they_expect():
    assert limits.GRID_SIDE.expected() == "an integer from 8 to 2048"
    assert limits.RATIO.expected() == "a number from 1 to 1000"
    assert limits.TOLERANCE.expected() == "a number from 1e-14 to 0.1"
    assert limits.MAXITER.expected() == "an integer from 1 to 1000000"  # not 1e+06
    assert limits.FRAME_DT.expected() == "a number above 0 and at most 0.1"
    assert limits.FRAMES.expected() == "an integer from 1 to 1000000"
    assert limits.COORDINATE.span() == "from -100 to 100"


def test_membership_and_clamp_follow_the_ends():
    assert 8 in limits.GRID_SIDE and 2048 in limits.GRID_SIDE and 7 not in limits.GRID_SIDE
    assert 0.1 in limits.FRAME_DT and 0.0 not in limits.FRAME_DT and 1e-9 in limits.FRAME_DT
    assert float("nan") not in limits.RATIO and 10 ** 6 in limits.FRAMES and 10 ** 6 + 1 not in limits.FRAMES
    assert limits.RATIO.clamp(5000.0) == 1000.0 and limits.RATIO.clamp(0.2) == 1.0 and limits.FRAMES.clamp(0) == 1


@pytest.mark.parametrize("limit, text, message", [
    (limits.RATIO, "lots", "expected a number, got 'lots'"),
    (limits.RATIO, "0.5", "expected a number from 1 to 1000, got 0.5"),
    (limits.FRAMES, "2.5", "expected an integer, got '2.5'"),
    (limits.FRAMES, "0", "expected an integer from 1 to 1000000, got 0"),
    (limits.FRAMES, "9" * 5000, "expected an integer, got '" + "9" * 17 + "..." + "9" * 18 + "'"),  # cut
    (limits.RATIO, "1" * 400, "expected a number from 1 to 1000, got " + "1" * 40 + "..."),
])
def test_parse_says_what_was_wrong(limit, text, message):
    with pytest.raises(ValueError) as info:
        limit.parse(text)
    assert str(info.value) == message


def test_parse_accepts_values_in_range():
    assert limits.TOLERANCE.parse("1e-8") == 1e-8 and limits.FRAMES.parse("300") == 300
    assert isinstance(limits.FRAMES.parse("3"), int)
    assert Range(0.0, 1.0, above=True).parse("1") == 1.0


def test_grid_text():
    assert parse_grid("128x64") == (128, 64) and parse_grid(" 8X2048 ") == (8, 2048)
    with pytest.raises(ValueError, match=r"^expected NXxNY such as 128x64, got 'big'$"):
        parse_grid("big")
    with pytest.raises(ValueError, match=r"^expected each side from 8 to 2048 cells, got 5x5$"):
        parse_grid("5x5")
    with pytest.raises(ValueError, match=r"^expected NXxNY such as 128x64, got '9{17}\.\.\.9{16}x8'$"):
        parse_grid("9" * 5000 + "x8")  # never int() of thousands of digits


def test_brief_bounds_every_value_before_writing_it_out():
    bomb = ["x"] * 10
    for _ in range(30):  # 10 ** 30 leaves if written out
        bomb = [bomb] * 10
    assert len(limits.brief(bomb)) <= limits.SHOWN_CHARS + 3
    assert limits.brief("y" * 10 ** 6) == "'" + "y" * 17 + "..." + "y" * 18 + "'"
    assert limits.brief([1, 2]) == "[1, 2]" and limits.brief(3.5) == "3.5"
