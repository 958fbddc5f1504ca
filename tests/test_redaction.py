from __future__ import annotations

import pytest
from twilio.base.exceptions import TwilioRestException

from calls import twilio_rest
from calls.redaction import redact

TOKEN = "0123456789abcdef0123456789abcdef"
NOT_FOUND = "The requested resource /2010-04-01/Accounts/ACxx/Calls/CAxx.json was not found"


def test_a_secret_is_replaced_wherever_it_stands_alone():
    text = f"Authenticate as AC1:{TOKEN}@api.twilio.com failed; token={TOKEN}."
    assert redact(text, TOKEN) == "Authenticate as AC1:[redacted]@api.twilio.com failed; token=[redacted]."


def test_a_short_placeholder_is_not_treated_as_a_secret():
    text = "The requested resource /Accounts/x/Calls/CAxx was not found"
    assert redact(text, "x") == text
    assert redact(text, "1234567") == text


def test_only_whole_values_are_replaced():
    text = f"call CA{TOKEN} ended; X{TOKEN}9 is another value"
    assert redact(text, TOKEN) == text


def test_regex_characters_in_a_secret_are_literal():
    assert redact("key a.b+c*d?e here, aXbbcdde not", "a.b+c*d?e") == "key [redacted] here, aXbbcdde not"


def test_twilio_errors_never_carry_the_auth_token(settings):
    def request(client: object) -> None:
        raise TwilioRestException(401, "https://api.twilio.com", f"Bad credentials {TOKEN} for xx", 20003)

    settings.TWILIO_AUTH_TOKEN = TOKEN
    with pytest.raises(twilio_rest.TwilioRestError) as excinfo:
        twilio_rest._run("hang-up", "CA" + "1" * 32, request)
    assert str(excinfo.value).endswith("Bad credentials [redacted] for xx")


def test_a_placeholder_token_leaves_twilio_errors_readable(settings):
    def request(client: object) -> None:
        raise TwilioRestException(404, "https://api.twilio.com", NOT_FOUND, 20404)

    settings.TWILIO_AUTH_TOKEN = "x"
    with pytest.raises(twilio_rest.TwilioRestError) as excinfo:
        twilio_rest._run("hang-up", "CA" + "1" * 32, request)
    assert str(excinfo.value).endswith(NOT_FOUND)
