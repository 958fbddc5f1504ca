"""MASK_PHONE_NUMBERS: lists and search results show +1555•••1111; the call's page, in full."""

from __future__ import annotations

import pytest

from calls.admin import mask_phone
from calls.models import Call, Role, ToolCall, Turn

pytestmark = pytest.mark.django_db

FROM, TO = "+15550001111", "+15552223333"


@pytest.fixture
def call() -> Call:
    call = Call.objects.create(call_sid="CA" + "5" * 32, from_number=FROM, to_number=TO)
    Turn.objects.create(call=call, position=0, role=Role.CALLER, text="a table for two")
    ToolCall.objects.create(call=call, position=1, name="book_table")
    return call


@pytest.mark.parametrize(
    ("number", "masked"),
    [
        ("+15550001111", "+1555•••1111"),
        ("+447700900123", "+4477•••0123"),
        ("client:alice", "clien•••lice"),
        ("+1234567", "•••67"),
        ("", ""),
    ],
)
def test_mask_phone_keeps_the_prefix_and_last_four_digits(number, masked):
    assert mask_phone(number) == masked


@pytest.mark.parametrize("path", ["/admin/calls/call/", "/admin/calls/turn/", "/admin/calls/toolcall/"])
def test_lists_show_masked_numbers(staff_client, settings, call, path):
    settings.MASK_PHONE_NUMBERS = True
    body = staff_client.get(path).content.decode()
    assert "+1555•••1111" in body and "+1555•••3333" in body
    assert FROM not in body and TO not in body


def test_search_by_full_number_finds_the_call_but_shows_it_masked(staff_client, settings, call):
    settings.MASK_PHONE_NUMBERS = True
    Call.objects.create(call_sid="CA" + "6" * 32, from_number="+15557770000")
    response = staff_client.get("/admin/calls/call/", {"q": "+15550001111"})
    assert [c.call_sid for c in response.context["cl"].result_list] == [call.call_sid]
    rows = response.content.decode().split('id="result_list"', 1)[1]
    assert "+1555•••1111" in rows and FROM not in rows


def test_the_call_page_shows_full_numbers_to_staff(staff_client, settings, call):
    settings.MASK_PHONE_NUMBERS = True
    body = staff_client.get(f"/admin/calls/call/{call.pk}/change/").content.decode()
    assert FROM in body and TO in body


def test_numbers_are_shown_in_full_by_default(staff_client, call):
    body = staff_client.get("/admin/calls/call/").content.decode()
    assert FROM in body and "•••" not in body
