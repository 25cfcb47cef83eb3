import itertools

import pytest

from slimnlp.errors import ConfigError
from slimnlp.schedules import Constant, Cubic, Linear


def test_linear_and_constant_values():
    s = Linear(start=0.2, end=1.0)
    assert [s(step, 10) for step in (0, 5, 10, 20)] == pytest.approx([0.2, 0.6, 1.0, 1.0])
    assert Constant(start=0.0, end=0.7)(3, 10) == pytest.approx(0.7)


def test_cubic_follows_zhu_gupta_with_warmup_and_cooldown():
    s = Cubic(start=0.0, end=0.9, warmup=0.1, cooldown=0.1)
    assert s(5, 100) == 0.0  # still in warmup
    # halfway through the ramp: 0.9 * (1 - 0.5**3)
    assert s(50, 100) == pytest.approx(0.9 * (1 - 0.5**3))
    assert s(95, 100) == pytest.approx(0.9)  # cooldown holds the end value
    values = [s(step, 100) for step in range(101)]
    assert all(b >= a for a, b in itertools.pairwise(values))  # monotone


@pytest.mark.parametrize("kwargs", [{"warmup": -0.1}, {"cooldown": 1.0}, {"warmup": 0.6, "cooldown": 0.5}])
def test_bad_schedule_fractions_raise(kwargs):
    with pytest.raises(ConfigError, match="schedule"):
        Linear(**kwargs)
