"""Which endpoint a call talks to: OpenAI with a key; the local stand-in on a development server
without one (issue 13: "the first ten minutes"); a clear failure in production without one."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import websockets
from asgiref.sync import async_to_sync
from django.contrib.auth import get_user_model
from django.test import Client

from calls import model_endpoint
from calls.fakes import mulaw, standin
from calls.models import Agent, Call, CallDirection, CallStatus, EndedReason, Role
from calls.openai_link import unreachable_reason

ROOT = Path(__file__).resolve().parent.parent
GREETING = standin.BUILTIN_SCRIPT["replies"][0]
ANSWER = standin.BUILTIN_SCRIPT["replies"][1]


def standin_setting(**variables: str) -> bool:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "DEBUG"))}
    environment |= {"DJANGO_SETTINGS_MODULE": "voiceagent.settings", "SECRET_KEY": "x" * 50, **variables}
    result = subprocess.run(
        [sys.executable, "-c", "from django.conf import settings; print(settings.OPENAI_STANDIN)"],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout.strip() == "True"


def test_only_a_development_server_without_key_or_url_uses_the_standin():
    assert standin_setting(DEBUG="true", OPENAI_API_KEY="") is True
    assert standin_setting(DEBUG="true", OPENAI_API_KEY="sk-real-0000") is False
    assert standin_setting(DEBUG="true", OPENAI_REALTIME_URL="ws://127.0.0.1:8765/v1/realtime") is False
    assert standin_setting(DEBUG="false", OPENAI_API_KEY="") is False


def test_with_a_key_the_standin_is_never_used(settings):
    settings.OPENAI_STANDIN = True
    settings.OPENAI_API_KEY = "sk-real-0000"
    settings.OPENAI_REALTIME_URL = "wss://api.openai.com/v1/realtime"
    where = async_to_sync(model_endpoint.endpoint)()
    assert where == model_endpoint.Endpoint("wss://api.openai.com/v1/realtime", "sk-real-0000", standin=False)
    assert model_endpoint.recorded_model("gpt-realtime") == "gpt-realtime"


def test_without_a_key_in_production_the_call_cannot_connect(settings):
    settings.OPENAI_STANDIN = False
    settings.OPENAI_API_KEY = ""
    with pytest.raises(model_endpoint.EndpointError, match=r"^OPENAI_API_KEY is not set$"):
        async_to_sync(model_endpoint.endpoint)()


def test_without_a_key_in_development_the_standin_listens_locally(settings):
    settings.OPENAI_STANDIN = True
    settings.OPENAI_API_KEY = ""

    async def scenario():
        first, again = await asyncio.gather(model_endpoint.endpoint(), model_endpoint.endpoint())
        # It speaks the Realtime protocol: a session opens with the local key.
        async with websockets.connect(
            first.url + "?model=gpt-realtime", additional_headers={"Authorization": f"Bearer {first.api_key}"}
        ) as ws:
            created = json.loads(await asyncio.wait_for(ws.recv(), 5))
        return first, again, created

    first, again, created = async_to_sync(scenario)()
    assert first == again and first.standin and first.api_key == standin.LOCAL_API_KEY
    assert first.url.startswith("ws://127.0.0.1:") and first.url.endswith("/v1/realtime")
    assert created["type"] == "session.created"
    assert model_endpoint.recorded_model("gpt-realtime") == "stand-in"


def test_unreachable_reasons_read_like_sentences():
    url = "wss://api.openai.com/v1/realtime?model=gpt-realtime"
    dns = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    assert unreachable_reason(dns, url) == "api.openai.com not found (Name or service not known)"
    refused = ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 443)")
    assert unreachable_reason(refused, url) == "api.openai.com:443 refused the connection"
    assert unreachable_reason(TimeoutError(), url) == "no answer from api.openai.com within 10 s"


# --- end to end: `make run` with no key -----------------------------------------------------


def signed_in_cookie(settings, username: str = "newcomer") -> str:
    """A staff session in the shared database, signed with the server's SECRET_KEY."""
    settings.SECRET_KEY = "e2e-secret-key-not-for-production"  # tests/conftest.py: server_environment
    user = get_user_model().objects.create_user(
        username, password="pw-123456", is_staff=True, is_superuser=True
    )
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}"


async def web_call(server_url: str, cookie: str, agent_id: int, say: bytes, greeting: int, answer: int):
    """A web phone call as the page makes it, without a browser: once the ``greeting`` bytes of
    the agent have played, ``say`` (speech, then silence), and once its ``answer`` has played
    too, hang up. Returns what was heard, the server's own messages and the close code."""
    ws_url = server_url.replace("http://", "ws://") + "/ws/phone"
    heard, own = bytearray(), []
    async with websockets.connect(ws_url, additional_headers={"Origin": server_url, "Cookie": cookie}) as ws:
        assigned = json.loads(await asyncio.wait_for(ws.recv(), 10))
        own.append(assigned)
        stream_sid = assigned["streamSid"]
        await ws.send(start_message(assigned, agent_id))
        spoke = hung_up = False
        async with asyncio.timeout(30):
            async for raw in ws:
                message = json.loads(raw)
                if message["event"] == "media":
                    heard += base64.b64decode(message["media"]["payload"])
                elif message["event"] == "mark":
                    await ws.send(raw)  # played at once, as far as the server can tell
                else:
                    own.append(message)
                if not spoke and len(heard) >= greeting:
                    spoke = True
                    for frame in media_frames(stream_sid, say):
                        await ws.send(frame)
                elif not hung_up and len(heard) >= greeting + answer:
                    hung_up = True
                    await ws.send(json.dumps({"event": "stop", "streamSid": stream_sid, "stop": {}}))
    return bytes(heard), own, ws.close_code


def start_message(assigned: dict[str, str], agent_id: int) -> str:
    start = {
        "accountSid": "",
        "streamSid": assigned["streamSid"],
        "callSid": assigned["callSid"],
        "tracks": ["inbound"],
        "customParameters": {"agent": str(agent_id)},
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
    }
    return json.dumps(
        {"event": "start", "sequenceNumber": "1", "start": start, "streamSid": start["streamSid"]}
    )


def media_frames(stream_sid: str, audio: bytes) -> list[str]:
    return [
        json.dumps(
            {
                "event": "media",
                "streamSid": stream_sid,
                "media": {
                    "track": "inbound",
                    "chunk": str(n + 1),
                    "timestamp": str(20 * n),
                    "payload": base64.b64encode(audio[i : i + 160]).decode(),
                },
            }
        )
        for n, i in enumerate(range(0, len(audio), 160))
    ]


@pytest.mark.e2e
def test_make_run_without_a_key_talks_to_the_labelled_standin(live, start_server, settings):
    server = start_server(DEBUG="true", OPENAI_API_KEY="", OPENAI_REALTIME_URL="")
    agent = Agent.objects.get()
    agent.greeting = "Hello! Thanks for calling."
    agent.save()
    cookie = signed_in_cookie(settings)

    page = urllib.request.urlopen(
        urllib.request.Request(f"{server.url}/admin/phone/", headers={"Cookie": cookie}), timeout=10
    ).read()
    assert b"Local stand-in, not the real model." in page
    assert b"set <code>OPENAI_API_KEY</code> in <code>.env</code> and restart" in page

    # What the stand-in says, exactly: the same script, rendered the same way (espeak-ng or tones).
    greeting, answer = (reply.render_audio() for reply in standin.load_script(None).replies[:2])
    speech = mulaw.tone(800, seed=5) + mulaw.silence(1000)
    heard, own, code = async_to_sync(web_call)(
        server.url, cookie, agent.pk, speech, len(greeting), len(answer)
    )

    assert code == 1000 and heard == greeting + answer
    assert own[-1] == {"event": "ended", "reason": EndedReason.CALLER_HUNG_UP, "error": ""}
    call = Call.objects.get(direction=CallDirection.WEB)
    assert call.model == model_endpoint.STANDIN_MODEL and call.status == CallStatus.COMPLETED
    agent_said = [t.text for t in call.turns.all() if t.role == Role.AGENT]
    assert agent_said[:2] == [GREETING, ANSWER]
    assert call.cost_usd is None  # nothing is billed
    assert "local OpenAI stand-in" in server.log()
