"""Point a Twilio number at this server, then prove Twilio's path to it works.

``manage.py connect_number`` calls these in order: ``base_url_resolve`` (PUBLIC_BASE_URL, or
the https URL of a running ngrok agent), ``number_plan`` (the number's current routing and
what will change), ``number_connect`` (the REST update) and ``path_check`` (a request signed
the way Twilio signs, sent to the public URL, and our answer read back).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import requests
from django.conf import settings
from twilio.request_validator import RequestValidator

from calls import twilio_rest

__all__ = [
    "DEFAULT_NGROK_API_URL",
    "PROBE_CALL_SID",
    "STATUS_CALLBACK_PATH",
    "WEBHOOK_PATH",
    "NumberPlan",
    "PathCheck",
    "SetupError",
    "base_url_resolve",
    "configured_base_url",
    "ngrok_public_url",
    "number_connect",
    "number_plan",
    "path_check",
]

WEBHOOK_PATH = "/incoming-call"
STATUS_CALLBACK_PATH = "/call-status"
DEFAULT_NGROK_API_URL = "http://127.0.0.1:4040/api/tunnels"
# The proof posts a status callback for this CallSid. No call has it (Twilio's SIDs are random
# hex), so our /call-status acknowledges it and ignores it, writing nothing: the same route,
# proxy and signature check as Twilio's real callbacks, without a Call row.
PROBE_CALL_SID = "CA" + "0" * 32
HTTP_TIMEOUT_SECONDS = 10.0


class SetupError(Exception):
    """Something the person running the command has to fix; the text says what."""


def _is_local(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def configured_base_url() -> str | None:
    """PUBLIC_BASE_URL, unless it is unset or this machine's own address (the development
    default ``http://localhost:8000``), which Twilio cannot reach."""
    value = (getattr(settings, "PUBLIC_BASE_URL", "") or "").rstrip("/")
    host = urlsplit(value).hostname or ""
    return None if not host or _is_local(host) else value


def ngrok_public_url(*, api_url: str = DEFAULT_NGROK_API_URL) -> str:
    """The https public URL of the running ngrok agent whose local API is ``api_url``."""
    try:
        response = requests.get(api_url, timeout=HTTP_TIMEOUT_SECONDS)
        response.raise_for_status()
        tunnels = response.json().get("tunnels") or []
    except (requests.RequestException, ValueError, AttributeError) as exc:
        raise SetupError(
            f"PUBLIC_BASE_URL is not set and no ngrok agent answers at {api_url} ({type(exc).__name__}). "
            "Start one with `ngrok http 8000`, or set PUBLIC_BASE_URL to your server's https origin."
        ) from exc
    urls = [str(t.get("public_url") or "") for t in tunnels if isinstance(t, dict)]
    https = [url for url in urls if url.startswith("https://")]
    if https:
        return https[0].rstrip("/")
    if urls:
        raise SetupError(
            f"The ngrok agent at {api_url} has no https tunnel (only {', '.join(urls)}). Twilio's media "
            "stream needs wss://, so plain http cannot carry a call: run `ngrok http 8000` (https)."
        )
    raise SetupError(f"The ngrok agent at {api_url} has no tunnel open: run `ngrok http 8000`.")


def base_url_resolve(*, ngrok_api_url: str = DEFAULT_NGROK_API_URL) -> tuple[str, str]:
    """The public origin to point the number at, and where it came from (for the message)."""
    configured = configured_base_url()
    if configured is None:
        return ngrok_public_url(api_url=ngrok_api_url), f"the ngrok agent at {ngrok_api_url}"
    if not configured.startswith("https://"):
        raise SetupError(
            f"PUBLIC_BASE_URL is {configured}, not https: Twilio's media stream needs wss://, so calls "
            "would end at once. Put the server behind https (ngrok does) and set PUBLIC_BASE_URL to it."
        )
    return configured, "PUBLIC_BASE_URL"


@dataclass(frozen=True)
class NumberPlan:
    """A number's routing now, and the fields an update will send."""

    number: twilio_rest.IncomingNumber
    fields: dict[str, str]

    @property
    def changes(self) -> list[tuple[str, str, str]]:
        """(field, current, new) for every field that differs."""
        return [
            (name, self.number.voice.get(name, ""), value)
            for name, value in self.fields.items()
            if self.number.voice.get(name, "") != value
        ]


def number_plan(*, phone_number: str, base_url: str) -> NumberPlan:
    number = twilio_rest.incoming_number_find(phone_number)
    if number is None:
        account = getattr(settings, "TWILIO_ACCOUNT_SID", "")
        raise SetupError(
            f"The Twilio account {account} has no number {phone_number}. Give it in E.164 form "
            "(+15551234567), as listed in the console under Phone Numbers > Active numbers."
        )
    if number.voice.get("TrunkSid"):
        raise SetupError(
            f"{phone_number} belongs to an Elastic SIP Trunk ({number.voice['TrunkSid']}): its calls go "
            "to the trunk and never to a webhook. Remove it from the trunk in the console first."
        )
    fields = {
        "VoiceUrl": base_url + WEBHOOK_PATH,
        "VoiceMethod": "POST",
        "StatusCallback": base_url + STATUS_CALLBACK_PATH,
        "StatusCallbackMethod": "POST",
    }
    if number.voice.get("VoiceApplicationSid"):
        # With a TwiML App set, Twilio uses the App's URLs and ignores VoiceUrl.
        fields["VoiceApplicationSid"] = ""
    return NumberPlan(number=number, fields=fields)


def number_connect(*, plan: NumberPlan) -> twilio_rest.IncomingNumber:
    return twilio_rest.incoming_number_update(plan.number.sid, plan.fields)


@dataclass(frozen=True)
class PathCheck:
    ok: bool
    message: str
    warnings: list[str] = field(default_factory=list)


def _probe(url: str, params: dict[str, str], signature: str) -> requests.Response:
    return requests.post(
        url,
        data=params,
        headers={"X-Twilio-Signature": signature, "User-Agent": "voiceagent connect_number"},
        timeout=HTTP_TIMEOUT_SECONDS,
        allow_redirects=False,  # Twilio would not get our answer from a redirect either
    )


def _unreachable(url: str, exc: requests.RequestException) -> str:
    host = urlsplit(url).hostname or url
    if isinstance(exc, requests.exceptions.SSLError):
        return f"TLS failed with {host}: {exc}. Twilio needs a valid certificate on the public URL."
    if isinstance(exc, requests.exceptions.Timeout):
        return f"{url} did not answer within {HTTP_TIMEOUT_SECONDS:.0f} s (Twilio waits at most 15 s)."
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, socket.gaierror) or "NameResolutionError" in type(cause).__name__:
            return f"DNS: {host} does not resolve. Is the ngrok tunnel still open, and the name right?"
        cause = cause.__cause__ or cause.__context__
    return f"Could not connect to {url}: is the server running (make run), and the tunnel open? ({exc})"


def path_check(*, base_url: str, auth_token: str) -> PathCheck:
    """Post a signed status callback for ``PROBE_CALL_SID`` to ``base_url`` + /call-status, as
    Twilio would, and read the answer: 200 means Twilio's requests reach this server and pass
    its signature check. Then the same with a wrong signature, which must get 403."""
    url = base_url + STATUS_CALLBACK_PATH
    params = {
        "CallSid": PROBE_CALL_SID,
        "AccountSid": getattr(settings, "TWILIO_ACCOUNT_SID", "") or "",
        "CallStatus": "ringing",
        "Direction": "inbound",
        "ApiVersion": "2010-04-01",
    }
    validator = RequestValidator(auth_token)
    try:
        response = _probe(url, params, validator.compute_signature(url, params))
    except requests.RequestException as exc:
        return PathCheck(False, _unreachable(url, exc))
    ngrok_error = response.headers.get("Ngrok-Error-Code", "")
    status = response.status_code
    if status == 200:
        return PathCheck(
            True,
            f"Twilio's requests reach this server: a signed POST {url} was accepted.",
            _unsigned_accepted(url, params),
        )
    if status == 403:
        return PathCheck(
            False,
            f"HTTP 403 from {url}: the server refused a correctly signed request. PUBLIC_BASE_URL "
            "differs from the URL Twilio will use (the server checks signatures against its own "
            f"PUBLIC_BASE_URL: set it to {base_url} and restart), or its TWILIO_AUTH_TOKEN differs.",
        )
    if ngrok_error:
        return PathCheck(
            False,
            f"ngrok answered HTTP {status} with {ngrok_error} for {url}: "
            f"https://ngrok.com/docs/errors/{ngrok_error.lower()}/ (is `make run` running?)",
        )
    if 300 <= status < 400:
        return PathCheck(
            False,
            f"HTTP {status} from {url}: redirected to {response.headers.get('Location', '?')}. Twilio does "
            "not follow that with the same POST: use the final https origin as PUBLIC_BASE_URL.",
        )
    if status == 404:
        return PathCheck(
            False,
            f"HTTP 404 from {url}: whatever answers there is not this server "
            "(a tunnel to another port, or another app on that domain).",
        )
    return PathCheck(False, f"HTTP {status} from {url}: {response.text[:200]!r}")


def _unsigned_accepted(url: str, params: dict[str, str]) -> list[str]:
    try:
        response = _probe(url, params, "bm90IGEgc2lnbmF0dXJl")
    except requests.RequestException:
        return []
    if response.status_code == 403:
        return []
    return [
        f"The server also accepted a request with a wrong signature (HTTP {response.status_code}): "
        "TWILIO_VALIDATE_SIGNATURES is off there, so anyone can post to its webhooks."
    ]
