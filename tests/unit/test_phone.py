"""Phone numbers written any common way reduce to one E.164 form; non-numbers reduce to None."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from calltime.phone import is_extension, normalise


@pytest.mark.parametrize(
    "raw",
    [
        "+14155550123",
        "(415) 555-0123",
        "415.555.0123",
        "415-555-0123",
        "4155550123",
        "415 555 0123",
        "+1 415 555 0123",
        "+1 (415) 555-0123",
        "1-415-555-0123",
        "1 (415) 555-0123",
        "14155550123",
        "tel:+1-415-555-0123",
        "tel:+14155550123",
        "  (415) 555-0123  ",
        "+14155550123\n",
    ],
)
def test_common_us_spellings_normalise_to_the_same_e164(raw: str) -> None:
    assert normalise(raw) == "+14155550123"


@pytest.mark.parametrize(
    "raw",
    [
        "(415) 555-0123 x12",
        "415-555-0123 x 12",
        "415.555.0123 ext. 12",
        "+1 415 555 0123 ext 12",
        "tel:+14155550123;ext=12",
    ],
)
def test_an_extension_after_the_number_is_dropped(raw: str) -> None:
    assert normalise(raw) == "+14155550123"


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        ("+44 20 7946 0958", "US", "+442079460958"),
        ("011 44 20 7946 0958", "US", "+442079460958"),
        ("020 7946 0958", "GB", "+442079460958"),
        ("+14155550123", "GB", "+14155550123"),
        ("(415) 555-0123", "GB", None),
        ("+14083388064", "US", "+14083388064"),  # as RingCentral sends PSTN numbers
    ],
)
def test_numbers_without_a_country_code_are_read_in_the_default_region(
    raw: str, region: str, expected: str | None
) -> None:
    assert normalise(raw, region) == expected


@pytest.mark.parametrize(
    "raw",
    [
        None,
        "",
        "   ",
        "abc",
        "x12",
        "+",
        "+1",
        "555-0123",  # too short: no area code
        "555-1234",
        "911",
        "(000) 000-0000",
        "12345678901234567890",
        "+1 415 555 01234567",
        "\x00",
        "Anonymous",
    ],
)
def test_garbage_empty_and_invalid_numbers_normalise_to_none(raw: str | None) -> None:
    assert normalise(raw) is None


@pytest.mark.parametrize("raw", ["102", "10", "1234", "123456", " 102 "])
def test_internal_extensions_are_not_phone_numbers(raw: str) -> None:
    assert is_extension(raw)
    assert normalise(raw) is None


@pytest.mark.parametrize(
    "raw",
    [None, "", "1", "1234567", "+102", "10a", "1 02", "ext 102", "４１５", "+14155550123"],
)
def test_only_short_all_digit_numbers_are_extensions(raw: str | None) -> None:
    assert not is_extension(raw)


@given(st.text())
def test_normalise_never_raises_and_its_output_is_a_fixed_point(raw: str) -> None:
    result = normalise(raw)
    if result is not None:
        assert result.startswith("+")
        assert normalise(result) == result


# North American numbers: area code and exchange start with 2-9.
_NANP = st.tuples(
    st.from_regex(r"[2-9][0-9]{2}", fullmatch=True),
    st.from_regex(r"[2-9][0-9]{2}", fullmatch=True),
    st.from_regex(r"[0-9]{4}", fullmatch=True),
)
_SEPARATORS = st.sampled_from(["", " ", "-", ".", "  "])


@given(_NANP, _SEPARATORS, st.sampled_from(["", "1", "+1", "+1 ", "1-", "tel:+1"]))
def test_separators_and_the_us_prefix_never_change_the_result(
    parts: tuple[str, str, str], separator: str, prefix: str
) -> None:
    assert normalise(prefix + separator.join(parts)) == normalise("".join(parts))


@given(st.text(alphabet="0123456789+()-. x", max_size=30), st.sampled_from(["US", "GB", "DE"]))
def test_normalise_output_is_a_fixed_point_in_any_region(raw: str, region: str) -> None:
    result = normalise(raw, region)
    if result is not None:
        assert normalise(result, region) == result
