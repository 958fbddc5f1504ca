"""The review pages in a real headless Chromium (Debian's package, driven by Playwright) against
our app under daphne: log in, review a call and play its recording, watch a call live and hang
it up. Screenshots go to tests/artifacts/ for a person to look at."""

from __future__ import annotations

import asyncio
import io
import wave
from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.files.base import ContentFile
from django.utils import timezone

from calls import analysis_jobs
from calls.fakes.openai_realtime import Reply, Script
from calls.fakes.twilio_caller import mulaw_to_linear, mulaw_tone
from calls.models import (
    Agent,
    AnalysisField,
    AnalysisPlan,
    AnalysisStatus,
    Call,
    CallAnalysis,
    EndedReason,
    Role,
    ToolCall,
    Turn,
)
from tests.chromium import ARTIFACTS, signed_in_page
from tests.test_e2e_bridge import caller_for, dial, speak

pytestmark = pytest.mark.e2e


def stereo_wav(seconds: float) -> bytes:
    """Caller tone on the left, agent tone on the right, 8 kHz 16-bit, like a call recording."""
    left = [mulaw_to_linear(b) for b in mulaw_tone(int(seconds * 1000), freq=300, amplitude=6000)]
    right = [mulaw_to_linear(b) for b in mulaw_tone(int(seconds * 1000), freq=500, amplitude=6000)]
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(
            b"".join(
                a.to_bytes(2, "little", signed=True) + b.to_bytes(2, "little", signed=True)
                for a, b in zip(left, right, strict=True)
            )
        )
    return buffer.getvalue()


def reviewed_call() -> Call:
    now = timezone.now()
    call = Call.objects.create(
        call_sid="CA3f9c2a71d04e5b8a6c1f0e2d9b7a4c58",
        from_number="+15550001111",
        to_number="+15552223333",
        agent=Agent.objects.get(),
        model="gpt-realtime-2.1",
        voice="marin",
        status="completed",
        answered_at=now - timedelta(seconds=40),
        started_at=now - timedelta(seconds=39),
        ended_at=now - timedelta(seconds=1),
        duration_seconds=38,
        ended_reason=EndedReason.CALLER_HUNG_UP,
        first_audio_ms=870,
        latency_p50_ms=720,
        latency_p95_ms=1650,
        interruptions=1,
        cost_usd=Decimal("0.0412"),
        usage={
            "input_tokens": 2950,
            "output_tokens": 1210,
            "input_token_details": {
                "text_tokens": 1700,
                "audio_tokens": 1250,
                "cached_tokens": 1280,
                "cached_tokens_details": {"text_tokens": 1152, "audio_tokens": 128},
            },
            "output_token_details": {"text_tokens": 260, "audio_tokens": 950},
            "transcription": {"input_tokens": 180, "output_tokens": 42},
        },
    )
    turns = [
        (Role.AGENT, "Hello, thanks for calling Luigi's. How can I help?", 0, None, False, None),
        (Role.CALLER, "Hi, I'd like a table for two tonight.", 3400, None, False, None),
        (Role.AGENT, "Of course. What time would you like?", 6100, 640, False, None),
        (Role.CALLER, "Around eight.", 8300, None, False, None),
        (Role.AGENT, "Booked: a table for two at eight tonight, under", 12900, 1650, True, 2300),
        (Role.CALLER, "Under Rossi, please.", 15200, None, False, None),
        (Role.AGENT, "Done, Mr Rossi. See you tonight!", 16900, 720, False, None),
    ]
    for position, (role, text, started, latency, interrupted, heard) in enumerate(turns):
        Turn.objects.create(
            call=call,
            position=position * 2,
            role=role,
            text=text,
            started_ms=started,
            latency_ms=latency,
            interrupted=interrupted,
            heard_ms=heard,
        )
    ToolCall.objects.create(
        call=call,
        position=7,
        name="book_table",
        arguments={"name": "Rossi", "party_size": 2, "time": "20:00"},
        result={"booked": True, "reference": "R-1042"},
        duration_ms=38,
    )
    call.recording.save(f"{call.call_sid}.wav", ContentFile(stereo_wav(2.0)))
    return call


def test_call_page_shows_the_conversation_and_plays_the_recording(web, loop, browser):
    call = reviewed_call()
    errors: list[str] = []

    async def scenario():
        page = await signed_in_page(browser, web, errors)
        await page.goto(f"{web.url}/admin/calls/call/{call.pk}/change/")
        seen = {
            "turns": await page.locator(".va-turn .va-text").all_inner_texts(),
            "tool": await page.locator(".va-tool").inner_text(),
            "interrupted": await page.locator(".va-interrupted").inner_text(),
            "latencies": await page.locator(".va-turn .va-latency").all_inner_texts(),
            "bars": await page.locator(".va-chart rect").count(),
            "usage": await page.locator(".va-usage").inner_text(),
            # The recording comes through the staff-only view; wait until the browser has read
            # its header (loadedmetadata), or fail on a media error.
            "duration": await page.evaluate(
                """() => new Promise((resolve, reject) => {
                    const audio = document.querySelector("audio");
                    if (audio.readyState >= 1) return resolve(audio.duration);
                    audio.addEventListener("loadedmetadata", () => resolve(audio.duration));
                    audio.addEventListener("error", () => reject(new Error(`audio ${audio.error.code}`)));
                })"""
            ),
            "src": await page.locator("audio").get_attribute("src"),
        }
        await page.screenshot(path=ARTIFACTS / "call-page.png", full_page=True)
        usage = await page.locator("fieldset:has(.va-usage)").bounding_box()
        clip = {"x": 0, "y": 0, "width": 1280, "height": usage["y"] + usage["height"] + 8}
        # What docs/call-page.png shows: the review, without the timing and Twilio details.
        await page.screenshot(path=ARTIFACTS / "call-page-review.png", full_page=True, clip=clip)
        await page.set_viewport_size({"width": 1680, "height": 900})  # the list is wide
        await page.goto(f"{web.url}/admin/calls/call/")
        seen["list"] = await page.locator("#result_list").inner_text()
        seen["totals"] = await page.locator("#va-totals").inner_text()
        await page.screenshot(path=ARTIFACTS / "call-list.png", full_page=True)
        return seen

    seen = loop.run(scenario())
    assert seen["turns"][:2] == [
        "Hello, thanks for calling Luigi's. How can I help?",
        "Hi, I'd like a table for two tonight.",
    ]
    assert len(seen["turns"]) == 7
    assert "book_table" in seen["tool"] and "R-1042" in seen["tool"]
    assert seen["interrupted"] == "interrupted, caller heard 2.3 s"
    assert seen["latencies"] == ["640 ms", "1650 ms", "720 ms"]
    assert seen["bars"] == 3
    assert "2,950" in seen["usage"] and "$0.0412" in seen["usage"]
    assert seen["src"] == f"/admin/calls/call/{call.pk}/recording.wav"
    assert seen["duration"] == pytest.approx(2.0, abs=0.01)
    assert "$0.0412" in seen["list"] and "720 ms" in seen["list"] and "0:38" in seen["list"]
    assert "1 call" in seen["totals"]
    assert errors == []


def test_live_page_shows_turns_as_they_happen_and_hangs_up(web, loop, browser, fake_openai):
    from playwright.async_api import expect

    greeting = Reply(transcript="Hello, thanks for calling Luigi's.")
    answer = Reply(transcript="We open at nine every morning.")
    Agent.objects.update(greeting=greeting.transcript)
    fake_openai.set_script(Script(replies=[greeting, answer], caller_transcripts=["When do you open?"]))
    errors: list[str] = []
    caller = caller_for(web)

    async def accept(dialog) -> None:
        await dialog.accept()

    async def scenario():
        try:
            await dial(caller)
            await caller.wait_heard(len(greeting.render_audio()))
            # The call is in progress: open the live page now, as a person would.
            page = await signed_in_page(browser, web, errors)
            await page.goto(f"{web.url}/admin/live/")
            card = page.locator(f'[data-call-sid="{caller.call_sid}"]')
            await expect(card).to_be_visible()
            await expect(page.locator("#va-live-status")).to_have_attribute("data-state", "open")
            # The caller asks while the page watches: both turns must arrive over the socket.
            speaking = asyncio.create_task(caller.send_audio(speak()))
            await expect(card.locator(".va-caller .va-text")).to_have_text(
                ["When do you open?"], timeout=15000
            )
            await expect(card.locator(".va-agent .va-text")).to_have_text(
                [greeting.transcript, answer.transcript], timeout=15000
            )
            await speaking
            await page.screenshot(path=ARTIFACTS / "live-page.png", full_page=True)
            closed = asyncio.create_task(caller.wait_closed_by_server(timeout=20))
            page.once("dialog", accept)
            await card.locator(".va-hang-up").click()
            code = await closed
            await expect(card.locator(".va-live-state")).to_have_text(
                "Call ended: Hung up by an operator", timeout=10000
            )
            await page.screenshot(path=ARTIFACTS / "live-page-ended.png", full_page=True)
            return code
        finally:
            await caller.aclose()

    code = loop.run(scenario(), timeout=120)
    assert code is not None
    call = Call.objects.get(call_sid=caller.call_sid)
    assert call.ended_reason == EndedReason.OPERATOR and call.ended_at is not None
    assert errors == []


def analyse(call: Call, *, success: bool, summary: str, data: dict, reason: str) -> None:
    plan, _ = AnalysisPlan.objects.get_or_create(
        agent=call.agent, defaults={"success_criteria": "The caller booked a table."}
    )
    for position, (name, kind) in enumerate(
        [("caller_name", "text"), ("party_size", "number"), ("time", "text")]
    ):
        AnalysisField.objects.get_or_create(
            plan=plan, name=name, defaults={"type": kind, "position": position}
        )
    CallAnalysis.objects.create(
        call=call,
        plan_version=analysis_jobs.plan_publish(plan),
        status=AnalysisStatus.DONE,
        summary=summary,
        data=data,
        success=success,
        reason=reason,
        model="gpt-5-mini",
        usage={"input_tokens": 612, "output_tokens": 118, "total_tokens": 730},
        cost_usd=Decimal("0.000389"),
    )


def test_post_call_analysis_in_the_admin(web, loop, browser):
    """Summary, fields and verdict on the call page; the success filter on the list; the
    agent's success rate. Screenshot: docs/call-analysis.png."""
    booked = reviewed_call()
    analyse(
        booked,
        success=True,
        summary="Mr Rossi booked a table for two at eight tonight; reference R-1042.",
        data={"caller_name": "Rossi", "party_size": 2, "time": "20:00"},
        reason="A table was booked and confirmed.",
    )
    missed = Call.objects.create(
        call_sid="CA" + "9" * 32, agent=booked.agent, ended_at=timezone.now(), from_number="+15550004444"
    )
    Turn.objects.create(call=missed, position=0, role=Role.CALLER, text="Do you have a table for ten?")
    analyse(
        missed,
        success=False,
        summary="The caller wanted a table for ten; none was offered.",
        data={"caller_name": None, "party_size": 10, "time": None},
        reason="No booking was made.",
    )
    errors: list[str] = []

    async def scenario():
        page = await signed_in_page(browser, web, errors)
        await page.goto(f"{web.url}/admin/calls/call/{booked.pk}/change/")
        analysis = page.locator(".va-analysis")
        seen = {
            "verdict": await analysis.locator(".va-verdict").inner_text(),
            "summary": await analysis.locator(".va-summary").inner_text(),
            "fields": await analysis.locator(".va-fields").inner_text(),
        }
        box = await page.locator("fieldset:has(.va-analysis)").bounding_box()
        await page.screenshot(
            path=ARTIFACTS / "call-analysis.png",
            full_page=True,
            clip={"x": 0, "y": 0, "width": 1280, "height": box["y"] + box["height"] + 8},
        )
        await page.set_viewport_size({"width": 1680, "height": 900})
        await page.goto(f"{web.url}/admin/calls/call/")
        await page.get_by_role("link", name="Unsuccessful", exact=True).click()  # the success filter
        seen["failed"] = await page.locator("#result_list").inner_text()
        await page.screenshot(path=ARTIFACTS / "call-list-failed.png", full_page=True)
        await page.goto(f"{web.url}/admin/calls/agent/{booked.agent.pk}/change/")
        seen["rate"] = await page.locator(".field-analysis_overview").inner_text()
        return seen

    seen = loop.run(scenario())
    assert seen["verdict"].startswith("✔ success") and "confirmed" in seen["verdict"]
    assert seen["summary"].startswith("Mr Rossi booked a table")
    assert "party_size\t2" in seen["fields"] and "caller_name\tRossi" in seen["fields"]
    assert "+15550004444" in seen["failed"] and "+15550001111" not in seen["failed"]
    assert "50%" in seen["rate"] and "1 of the last 2 judged calls succeeded" in seen["rate"]
    assert errors == []


def test_agent_tests_in_the_admin(web, loop, browser):
    """A call turned into a test from the call list, then the agent's page with each test's
    pass rate over its runs. Screenshot: docs/agent-tests.png."""
    from calls import agent_testing
    from calls.example_tools import restaurant_agent
    from tests.test_agent_testing import booking_call, flaky_test, make_test, spec

    restaurant = restaurant_agent()
    call = booking_call(restaurant)
    hours = make_test(restaurant, "Gives the opening hours", spec(must_say=["noon"]))
    for _ in range(7):
        agent_testing.run_test(hours)
    reference = make_test(restaurant, "Gives the booking reference", spec(must_say=["reference"]))
    for _ in range(3):
        agent_testing.run_test(reference)
    flaky = flaky_test(restaurant, "Says a table is free")
    flaky_passes = sum(1 for _ in range(10) if agent_testing.run_test(flaky).passed)
    errors: list[str] = []

    async def scenario():
        page = await signed_in_page(browser, web, errors)
        await page.goto(f"{web.url}/admin/calls/call/")
        await page.locator(f'input[name="_selected_action"][value="{call.pk}"]').check()
        await page.select_option('select[name="action"]', "make_test")
        await page.get_by_role("button", name="Go").click()
        await page.wait_for_url("**/admin/calls/agenttest/*/change/")
        seen = {"made": await page.locator(".messagelist").inner_text()}
        await page.goto(f"{web.url}/admin/calls/agent/{restaurant.pk}/change/")
        await page.locator("button[name=_run_tests]").wait_for()
        tests = page.locator("fieldset:has(.va-test-rates)")
        seen["rates"] = await tests.inner_text()
        await tests.scroll_into_view_if_needed()
        await tests.screenshot(path=ARTIFACTS / "agent-tests.png")
        return seen

    seen = loop.run(scenario())
    assert "made from the call" in seen["made"]
    assert "Gives the opening hours\t7/7\t100%" in seen["rates"]
    assert "Gives the booking reference\t0/3\t0%" in seen["rates"]
    assert f"Says a table is free\t{flaky_passes}/10\t{flaky_passes * 10}%" in seen["rates"]
    assert 0 < flaky_passes < 10
    assert "never run" in seen["rates"]  # the test just made from the call
    assert errors == []
