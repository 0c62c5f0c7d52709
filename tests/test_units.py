import pytest

from testbed import units


@pytest.mark.parametrize("text,bps", [("8mbit", 8e6), ("512kbit", 512e3), ("1.5mbit", 1.5e6), ("1gbit", 1e9),
                                      ("100bit", 100), ("2 Mbit", 2e6)])
def test_rates_are_decimal_bits_per_second(text, bps):
    assert units.parse_rate(text) == bps


@pytest.mark.parametrize("text,n", [("20MiB", 20 * 2**20), ("1KiB", 1024), ("1MB", 10**6), ("4096", 4096),
                                    (4096, 4096)])
def test_sizes_are_bytes_with_binary_and_decimal_prefixes(text, n):
    assert units.parse_size(text) == n


@pytest.mark.parametrize("text,s", [("40ms", 0.04), ("2s", 2), ("10m", 600), ("1h", 3600), ("250us", 250e-6)])
def test_durations_are_seconds(text, s):
    assert units.parse_duration(text) == pytest.approx(s)


@pytest.mark.parametrize("bad", ["8mbits", "fast", "", "8", 8, True, None])
def test_rates_need_a_known_unit(bad):
    with pytest.raises(units.UnitError):
        units.parse_rate(bad)


def test_percent():
    assert units.parse_percent("1%") == 0.01
    with pytest.raises(units.UnitError):
        units.parse_percent("1")


def test_tc_rate_is_integer_bits():
    assert units.tc_rate(1.5e6) == "1500000bit"
    assert units.fmt_rate(384e3) == "384kbit"
