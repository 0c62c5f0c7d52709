import pytest

from testbed import units


@pytest.mark.parametrize("text,bps", [("8mbit", 8e6), ("512kbit", 512e3), ("1.5mbit", 1.5e6), ("1gbit", 1e9),
                                      ("100bit", 100), ("2 Mbit", 2e6)])
def test_rates_are_decimal_bits_per_second(text, bps):
    assert units.parse_rate(text) == bps


@pytest.mark.parametrize("text,n", [("20MiB", 20 * 2**20), ("1KiB", 1024), ("1MB", 10**6), ("4096B", 4096),
                                    ("2 GiB", 2 * 2**30), ("1kB", 1000)])
def test_sizes_are_bytes_with_binary_and_decimal_prefixes(text, n):
    assert units.parse_size(text) == n


@pytest.mark.parametrize("text,s", [("40ms", 0.04), ("2s", 2), ("10m", 600), ("1h", 3600), ("250us", 250e-6)])
def test_durations_are_seconds(text, s):
    assert units.parse_duration(text) == pytest.approx(s)


@pytest.mark.parametrize("bad", ["8mbits", "fast", "", "8", 8, True, None, 8.0, float("inf")])
def test_rates_need_a_known_unit(bad):
    with pytest.raises(units.UnitError):
        units.parse_rate(bad)


@pytest.mark.parametrize("bad", ["16", 16, "5mb", "5Mb", "5mib", "1kb", "16b", float("nan"), "1s"])
def test_sizes_need_an_unambiguous_unit(bad):
    """A bare number would be bytes, and a lowercase b could be bits: both refused."""
    with pytest.raises(units.UnitError):
        units.parse_size(bad)


def test_mbps_is_refused_as_ambiguous_and_the_message_says_what_to_write():
    with pytest.raises(units.UnitError, match="write '20mbit'"):
        units.parse_rate("20mbps")
    assert units.parse_rate("20mbit/s") == 20e6


@pytest.mark.parametrize("parse,text", [(units.parse_rate, "9" * 400 + "mbit"), (units.parse_size, "9" * 400 + "MB"),
                                        (units.parse_duration, "9" * 400 + "s"), (units.parse_percent, "1e999%"),
                                        (units.parse_frequency, "inf/min")])
def test_numbers_must_be_finite(parse, text):
    with pytest.raises(units.UnitError):
        parse(text)


def test_messages_quote_only_an_excerpt_of_a_value():
    with pytest.raises(units.UnitError) as e:
        units.parse_size("x" * 10_000)
    assert len(str(e.value)) < 200


def test_percent():
    assert units.parse_percent("1%") == 0.01
    with pytest.raises(units.UnitError):
        units.parse_percent("1")


def test_tc_rate_is_integer_bits():
    assert units.tc_rate(1.5e6) == "1500000bit"
    assert units.fmt_rate(384e3) == "384kbit"


# The resolved experiment.yaml is written with these formatters: what it says must read back
# as the very value that ran (an odd size written rounded would be another file).
from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=2**50))
def test_every_size_is_written_so_it_reads_back_exactly(n):
    assert units.parse_size(units.exact_size(n)) == n


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.integers(min_value=1, max_value=10**12).map(float),
                 st.floats(min_value=1.0, max_value=1e12, allow_nan=False, allow_infinity=False)))
def test_every_rate_is_written_so_it_reads_back_exactly(bits):
    assert units.parse_rate(units.exact_rate(bits)) == bits


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=0.0, max_value=1e8, allow_nan=False, allow_infinity=False))
def test_every_duration_is_written_so_it_reads_back_exactly(seconds):
    assert units.parse_duration(units.exact_duration(seconds)) == seconds


def test_written_sizes_and_rates_stay_readable():
    assert units.exact_size(1000001) == "1000.001kB"        # was "1000kB": another file
    assert units.exact_size(3 * 2**20) == "3MiB" and units.exact_size(1536) == "1.5KiB"
    assert units.exact_rate(1234567.0) == "1234.567kbit"     # was '1.23457mbit' (another rate)
    assert units.exact_rate(8e6) == "8mbit" and units.exact_duration(0.04) == "40ms"
