"""The web phone in a real headless Chromium whose microphone is a WAV file (a tone burst, then
silence, looped by Chromium), against our app under daphne and the fake OpenAI Realtime
server: the page encodes the microphone to 8 kHz mu-law, plays the agent, echoes marks, and
honours a barge-in's clear."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from asgiref.sync import sync_to_async
from django.db import connection

from calls.fakes import mulaw, wav
from calls.fakes.openai_realtime import Reply, Script
from calls.models import Agent, Call, CallDirection, CallStatus, EndedReason, Role
from tests.chromium import ARTIFACTS, PASSWORD, USERNAME, anonymous_page, launched, signed_in_page

if TYPE_CHECKING:
    from playwright.async_api import Browser

pytestmark = pytest.mark.e2e

TONE_HZ = 220 + 7 * 30  # mulaw.tone's pitch for seed 7
MIC_RATE = 48000


@pytest.fixture(scope="module")
def microphone_wav(tmp_path_factory) -> Path:
    """What the fake microphone says, looped: 1 s of tone (speech to the fake's VAD), 2 s of silence."""
    tone = mulaw.decode(mulaw.tone(1000, seed=7, fmt=mulaw.PCM), mulaw.PCM)  # 24 kHz
    samples = wav.resample(tone, mulaw.RATES[mulaw.PCM], MIC_RATE) + [0] * (2 * MIC_RATE)
    path = tmp_path_factory.mktemp("microphone") / "caller.wav"
    wav.write_wav(path, samples, MIC_RATE)
    return path


@pytest.fixture(scope="module")
def chromium(loop, microphone_wav) -> Iterator[Browser]:
    """Overrides conftest's session browser for this module: this one's microphone is a WAV file."""
    media_flags = [
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-audio-capture={microphone_wav}",
    ]
    with launched(loop, media_flags) as browser:
        yield browser


def loudest_second(audio: bytes) -> bytes:
    """The 1 s window of 8 kHz mu-law with the most energy (the tone burst)."""
    step = 160
    frames = [mulaw.rms(audio[i : i + step]) for i in range(0, len(audio) - step + 1, step)]
    best = max(range(max(1, len(frames) - 49)), key=lambda i: sum(frames[i : i + 50]))
    return audio[best * step : best * step + 8000]


def pitch_hz(audio: bytes) -> float:
    samples = mulaw.decode(audio)
    crossings = sum(1 for a, b in itertools.pairwise(samples) if (a < 0) != (b < 0))
    return crossings / 2 / (len(samples) / 8000)


def test_talk_to_the_agent_from_the_browser_microphone(web, loop, browser, fake_openai):
    from playwright.async_api import expect

    answer = Reply(transcript="We open at nine.")
    # Long enough for the next tone burst to cut it off: the barge-in.
    long_answer = Reply(transcript="On Sundays we open at ten, and " * 4, audio=mulaw.tone(6000, seed=3))
    closing = Reply(transcript="You're welcome.")
    fake_openai.set_script(
        Script(
            replies=[answer, long_answer, closing],
            caller_transcripts=["When do you open?", "And on Sundays?", "Thanks."],
        )
    )
    agent = Agent.objects.get()
    Agent.objects.create(name="Disabled agent", phone_number="+15550009999", instructions="-", enabled=False)
    sessions_before = len(fake_openai.sessions)
    errors: list[str] = []

    async def scenario():
        page = await signed_in_page(browser, web, errors)
        await page.goto(f"{web.url}/admin/phone/")
        options = await page.locator("#va-phone-agent option").all_inner_texts()
        await page.select_option("#va-phone-agent", str(agent.pk))
        await page.click("#va-phone-call")
        status = page.locator("#va-phone-status")
        await expect(status).to_have_attribute("data-state", "in-call", timeout=10000)
        session = await fake_openai.wait_for_session(sessions_before, timeout=10)
        # An agent turn is stored (and shown) once the page has echoed the mark after its audio.
        agent_turns = page.locator("#va-phone-transcript .va-agent .va-text")
        await expect(agent_turns.nth(2)).to_have_text(closing.transcript, timeout=30000)
        await page.screenshot(path=ARTIFACTS / "web-phone.png", full_page=True)
        await page.click("#va-phone-hang-up")
        await expect(status).to_have_attribute("data-state", "idle", timeout=10000)
        await page.screenshot(path=ARTIFACTS / "web-phone-ended.png", full_page=True)
        stats = await page.evaluate("window.vaPhone.stats")
        transcript = await page.locator("#va-phone-transcript .va-text").all_inner_texts()
        said_by = await page.locator("#va-phone-transcript .va-meta").all_inner_texts()
        link = await status.locator("a").get_attribute("href")
        await session.wait_closed(timeout=10)
        return options, session, stats, transcript, said_by, link

    options, session, stats, transcript, said_by, link = loop.run(scenario(), timeout=120)
    assert options == ["Default agent (default agent)"]  # enabled agents only

    # The caller's audio reached OpenAI as 8 kHz mu-law, the tone still a tone.
    assert len(session.input_audio) == stats["bytesSent"] and stats["bytesSent"] % 160 == 0
    burst = loudest_second(bytes(session.input_audio))
    assert mulaw.rms(burst) > 2000
    assert pitch_hz(burst) == pytest.approx(TONE_HZ, rel=0.05)
    assert len(session.sent_of("input_audio_buffer.committed")) >= 3

    # The agent's audio was played; the second answer was cut off by the caller, and the model
    # was told how much of it was heard.
    assert stats["bytesReceived"] >= len(answer.render_audio()) + len(closing.render_audio())
    assert stats["marksEchoed"] == stats["marksReceived"] > 3
    assert stats["closeCode"] == 1000
    # The next burst starts 3 s after the one before the long answer: 1 s of tone and 0.4 s of
    # silence (the agent's VAD) later, the answer starts playing, so about 1.6 s of it is heard.
    [truncate] = session.truncates
    assert 1000 <= truncate["audio_end_ms"] <= 2000

    call = Call.objects.get(direction=CallDirection.WEB)
    assert call.call_sid.startswith("WEB") and len(call.call_sid) == 35
    assert (call.from_number, call.to_number, call.agent) == (USERNAME, "Default agent", agent)
    assert call.status == CallStatus.COMPLETED and call.ended_reason == EndedReason.CALLER_HUNG_UP
    assert call.interruptions == 1 and call.usage and call.recording
    turns = list(call.turns.all())
    spoken = [(t.role, t.text) for t in turns][:6]
    assert spoken == [
        (Role.CALLER, "When do you open?"),
        (Role.AGENT, answer.transcript),
        (Role.CALLER, "And on Sundays?"),
        (Role.AGENT, long_answer.transcript),
        (Role.CALLER, "Thanks."),
        (Role.AGENT, closing.transcript),
    ]
    interrupted = turns[3]
    assert interrupted.interrupted and interrupted.heard_ms == pytest.approx(truncate["audio_end_ms"], abs=1)
    assert transcript[:2] == ["When do you open?", answer.transcript]
    heard = f"{interrupted.heard_ms / 1000:.1f} s"
    assert said_by[:4] == ["You", "Agent", "You", f"Agent (interrupted, you heard {heard})"]
    assert link == f"/admin/calls/call/?q={call.call_sid}"
    assert errors == []


@pytest.fixture
def web_without_key(live, start_server, settings, tmp_path):
    """`make run` as a newcomer starts it: DEBUG on, no OPENAI_API_KEY, no OPENAI_REALTIME_URL."""
    from tests.conftest import local_web_server

    return local_web_server(
        start_server, settings, tmp_path, DEBUG="true", OPENAI_API_KEY="", OPENAI_REALTIME_URL=""
    )


def web_call_pk() -> int:
    """Read from the loop's thread, whose database connection is closed after: left open, it
    outlives the test and PostgreSQL refuses to drop the test database at the end."""
    try:
        return Call.objects.get(direction=CallDirection.WEB).pk
    finally:
        connection.close()


def test_without_a_key_the_web_phone_talks_to_the_labelled_standin(web_without_key, loop, browser):
    """Its screenshots (in tests/artifacts/) are the ones in docs/: copy them after a UI change."""
    from playwright.async_api import expect

    from calls.fakes import standin

    web = web_without_key
    # The agent has no greeting: the microphone's tone speaks first, and every 3 s again, so
    # which line of the script answers first depends on where Chromium starts the loop.
    replies = standin.BUILTIN_SCRIPT["replies"]
    a_reply = re.compile("|".join(re.escape(reply) for reply in replies))
    agent = Agent.objects.get()
    errors: list[str] = []

    async def scenario():
        # A newcomer's path: the root page sends them to sign in, then shows the set-up page,
        # which says the stand-in is in use and links the web phone.
        page = await anonymous_page(browser, web, errors)
        await page.goto(f"{web.url}/")
        await page.wait_for_url(re.compile(r"/admin/login/\?next=/$"))
        await page.fill("#id_username", USERNAME)
        await page.fill("#id_password", PASSWORD)
        await page.click("input[type=submit]")
        await page.wait_for_url(f"{web.url}/")
        await expect(page.locator("body")).to_contain_text("stand-in")
        await page.screenshot(path=ARTIFACTS / "setup-page.png", full_page=True)
        await page.click("text=Web phone")
        await page.wait_for_url(f"{web.url}/admin/phone/")
        label = page.locator("#va-phone-standin")
        await expect(label).to_contain_text("Local stand-in, not the real model.")
        await expect(label).to_contain_text("set OPENAI_API_KEY in .env and restart the server")
        await page.select_option("#va-phone-agent", str(agent.pk))
        await page.click("#va-phone-call")
        status = page.locator("#va-phone-status")
        await expect(status).to_have_attribute("data-state", "in-call", timeout=10000)
        # Shown once the page has played the answer and echoed the mark after it.
        first_answer = page.locator("#va-phone-transcript .va-agent .va-text").first
        await expect(first_answer).to_have_text(a_reply, timeout=30000)
        await page.screenshot(path=ARTIFACTS / "web-phone-standin.png", full_page=True)
        await page.click("#va-phone-hang-up")
        await expect(status).to_have_attribute("data-state", "idle", timeout=10000)
        stats = await page.evaluate("window.vaPhone.stats")
        call_pk = await sync_to_async(web_call_pk)()
        await page.goto(f"{web.url}/admin/calls/call/{call_pk}/change/")
        await expect(page.locator(".va-standin-label")).to_have_text("Local stand-in, not the real model")
        await expect(page.locator(".va-standin-hint")).to_contain_text("about 0 ms")
        await page.screenshot(path=ARTIFACTS / "call-standin.png", full_page=True)
        return stats

    stats = loop.run(scenario(), timeout=120)
    assert stats["bytesPlayed"] > 8000 and stats["closeCode"] == 1000  # over a second heard
    call = Call.objects.get(direction=CallDirection.WEB)
    assert call.model == "stand-in" and call.status == CallStatus.COMPLETED
    assert call.ended_reason == EndedReason.CALLER_HUNG_UP
    said = [t.text for t in call.turns.all() if t.role == Role.AGENT]
    assert said and set(said) <= set(replies)
    assert errors == []
