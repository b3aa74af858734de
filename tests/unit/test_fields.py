"""The shared checks of decoded values: their edges, one by one."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from watcher import fields
from watcher.fields import FieldError

ID = "0123456789abcdef" * 4


@pytest.mark.parametrize("value", [0, 7, fields.INT64_MAX])
def test_integer_accepts_ints_in_range(value):
    assert fields.integer(value, "size") == value


@pytest.mark.parametrize("value", [-1, fields.INT64_MAX + 1, 2**70, True, False, 1.0, float("inf"), float("nan"),
                                   "1", None, [1]])
def test_integer_refuses_the_rest_naming_the_field(value):
    with pytest.raises(FieldError, match=r"^size: "):
        fields.integer(value, "size")


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan"), True, "1", None, 11.0])
def test_number_refuses_what_is_not_a_finite_number_in_range(value):
    with pytest.raises(FieldError, match=r"^time: "):
        fields.number(value, "time", 0, 10)


@pytest.mark.parametrize("value", [[], [ID], [ID, ID[::-1]]])
def test_hex_ids_accepts_lists_of_ids(value):
    assert fields.hex_ids(value, "content") == tuple(value)


@pytest.mark.parametrize("value", [ID, [ID.upper()], [ID[:-1]], [ID + "0"], [ID[:-1], ID + "0"],
                                   [ID + "," + ID], [ID, 5], [[ID]], [None], [ID[:-1] + "g"], None])
def test_hex_ids_refuses_anything_else(value):
    with pytest.raises(FieldError, match=r"^content: "):
        fields.hex_ids(value, "content")


@pytest.mark.parametrize(("text", "expected"), [
    ("2024-02-29T23:59:58.123456Z", datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=UTC)),
    ("2024-06-01T12:00:00+02:00", datetime(2024, 6, 1, 10, 0, 0, tzinfo=UTC)),
])
def test_utc_time(text, expected):
    moment = fields.utc_time(text, "time")
    assert moment == expected and moment.tzinfo is UTC


@pytest.mark.parametrize("value", ["2024-01-01T00:00:00", "0001-01-01T00:00:00+01:00", "9999-12-31T23:00:00Z",
                                   "yesterday", 1764000000, None])
def test_utc_time_refuses_times_without_a_zone_or_beyond_every_local_time(value):
    with pytest.raises(FieldError, match=r"^time: "):
        fields.utc_time(value, "time")


@pytest.mark.parametrize("value", ["\ud800", "a\udbffb", 5])
def test_text_refuses_what_no_file_system_name_can_hold(value):
    with pytest.raises(FieldError):
        fields.text(value, "host")


def test_text_keeps_the_escapes_of_undecodable_bytes():
    assert fields.text("caf\udce9", "name") == "caf\udce9"


def test_deep_json_is_a_field_error_not_a_crash():
    with pytest.raises(FieldError):
        fields.load_json(b"[" * 100_000 + b"]" * 100_000)
