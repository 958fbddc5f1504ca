"""The record of every call: who answered it (Agent), the call itself, and what was said."""

from __future__ import annotations

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q


class Voice(models.TextChoices):
    MARIN = "marin", "Marin"
    CEDAR = "cedar", "Cedar"
    ALLOY = "alloy", "Alloy"
    ASH = "ash", "Ash"
    BALLAD = "ballad", "Ballad"
    CORAL = "coral", "Coral"
    ECHO = "echo", "Echo"
    SAGE = "sage", "Sage"
    SHIMMER = "shimmer", "Shimmer"
    VERSE = "verse", "Verse"


class TurnDetection(models.TextChoices):
    SERVER_VAD = "server_vad", "Server VAD (threshold and silence)"
    SEMANTIC_VAD = "semantic_vad", "Semantic VAD (eagerness)"


class Eagerness(models.TextChoices):
    AUTO = "auto", "Auto"
    LOW = "low", "Low (lets the caller finish)"
    MEDIUM = "medium", "Medium"
    HIGH = "high", "High (answers quickly)"


class NoiseReduction(models.TextChoices):
    OFF = "", "Off"
    NEAR_FIELD = "near_field", "Near field (handsets, headsets)"
    FAR_FIELD = "far_field", "Far field (speakerphones)"


class MachinePolicy(models.TextChoices):
    OFF = "", "No answering-machine detection"
    HANG_UP = "hang_up", "Detect machines and hang up"
    LEAVE_MESSAGE = "leave_message", "Detect machines and leave the voicemail message"


class Agent(models.Model):
    """What answers a phone number: the model's instructions, voice and turn-taking."""

    name = models.CharField(max_length=100, unique=True)
    phone_number = models.CharField(
        max_length=32,
        blank=True,
        help_text="E.164 number this agent answers (the call's To). Blank: the default agent.",
    )
    enabled = models.BooleanField(default=True)
    instructions = models.TextField(help_text="System prompt: who the agent is and what it does.")
    greeting = models.TextField(
        blank=True,
        help_text="If set, the agent speaks first, with this greeting. Blank: the caller speaks first.",
    )
    model = models.CharField(
        max_length=64,
        blank=True,
        help_text="OpenAI Realtime model. Blank: the OPENAI_REALTIME_MODEL setting.",
    )
    voice = models.CharField(max_length=32, choices=Voice.choices, default=Voice.MARIN)
    transcription_model = models.CharField(
        max_length=64,
        blank=True,
        default="gpt-realtime-whisper",
        help_text="Model that transcribes the caller. Blank: no caller transcript.",
    )
    transcription_language = models.CharField(
        max_length=8, blank=True, help_text="ISO-639-1 code such as 'en'. Blank: auto-detect."
    )
    turn_detection = models.CharField(
        max_length=16, choices=TurnDetection.choices, default=TurnDetection.SERVER_VAD
    )
    vad_threshold = models.FloatField(
        default=0.5,
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="Server VAD only: 0 to 1; higher ignores more background noise.",
    )
    vad_prefix_padding_ms = models.PositiveIntegerField(default=300)
    vad_silence_ms = models.PositiveIntegerField(
        default=500, help_text="Server VAD only: silence that ends the caller's turn."
    )
    vad_eagerness = models.CharField(
        max_length=8,
        choices=Eagerness.choices,
        default=Eagerness.AUTO,
        help_text="Semantic VAD only.",
    )
    noise_reduction = models.CharField(
        max_length=16,
        choices=NoiseReduction.choices,
        default=NoiseReduction.NEAR_FIELD,
        blank=True,
    )
    max_call_seconds = models.PositiveIntegerField(
        default=600,
        validators=[MinValueValidator(30)],
        help_text="Longest call: near the end the agent wraps up politely, then the call ends.",
    )
    tools = models.JSONField(
        default=list,
        blank=True,
        help_text="Names of the function tools this agent may call (end_call, transfer_call, yours).",
    )
    transfer_numbers = models.CharField(
        max_length=500,
        blank=True,
        help_text="Comma-separated E.164 numbers transfer_call may dial; the first is the default.",
    )
    idle_timeout_seconds = models.PositiveIntegerField(
        default=8,
        help_text="Server VAD only: prompt the caller after this much silence. 0: never.",
    )
    max_silence_prompts = models.PositiveIntegerField(
        default=2, help_text="After this many prompts without an answer, the agent says goodbye and hangs up."
    )
    machine_policy = models.CharField(
        "answering machines (outbound)", max_length=16, choices=MachinePolicy.choices, blank=True, default=""
    )
    voicemail_message = models.TextField(
        blank=True, help_text="Read to an answering machine when the policy is to leave a message."
    )
    record_calls = models.BooleanField(
        default=True, help_text="Keep a stereo recording (caller left, agent right) of each call."
    )
    unavailable_message = models.CharField(
        max_length=300,
        default="Sorry, our assistant is not available right now. Please call again later. Goodbye.",
        help_text="Spoken (by Twilio) when the AI cannot be reached, before hanging up.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            # One agent per number; blank (the default agent) counts as a number too.
            models.UniqueConstraint(fields=["phone_number"], name="agent_unique_phone_number"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def effective_model(self) -> str:
        return self.model or settings.OPENAI_REALTIME_MODEL

    @property
    def transfer_destinations(self) -> list[str]:
        return [n.strip() for n in self.transfer_numbers.split(",") if n.strip()]


class CallDirection(models.TextChoices):
    INBOUND = "inbound", "Inbound"
    OUTBOUND_API = "outbound-api", "Outbound"
    OUTBOUND_DIAL = "outbound-dial", "Outbound (dial leg)"
    WEB = "web", "Web phone"


class CallStatus(models.TextChoices):
    """Twilio's call statuses, spelled as Twilio sends them."""

    QUEUED = "queued", "Queued"
    INITIATED = "initiated", "Initiated"
    RINGING = "ringing", "Ringing"
    IN_PROGRESS = "in-progress", "In progress"
    COMPLETED = "completed", "Completed"
    BUSY = "busy", "Busy"
    FAILED = "failed", "Failed"
    NO_ANSWER = "no-answer", "No answer"
    CANCELED = "canceled", "Canceled"


TERMINAL_STATUSES = frozenset(
    {CallStatus.COMPLETED, CallStatus.BUSY, CallStatus.FAILED, CallStatus.NO_ANSWER, CallStatus.CANCELED}
)


class EndedReason(models.TextChoices):
    CALLER_HUNG_UP = "caller_hung_up", "Caller hung up"
    AGENT_ENDED = "agent_ended", "Agent ended the call"
    TRANSFERRED = "transferred", "Transferred"
    TIME_LIMIT = "time_limit", "Time limit reached"
    SILENCE = "silence", "Caller silent"
    OPERATOR = "operator_hung_up", "Hung up by an operator"
    ERROR = "error", "Error"
    SERVER_RESTART = "server_restart", "Server restarted"
    NO_STREAM = "no_stream", "Media stream never connected"
    NO_AGENT = "no_agent", "No agent available"
    MACHINE = "machine", "Answering machine"
    BUSY = "busy", "Busy"
    NO_ANSWER = "no_answer", "No answer"
    FAILED = "failed", "Call failed"
    CANCELED = "canceled", "Canceled"


class Call(models.Model):
    """One phone call, created by the voice webhook before Twilio gets its TwiML."""

    call_sid = models.CharField("Call SID", max_length=64, unique=True)
    account_sid = models.CharField(max_length=64, blank=True)
    agent = models.ForeignKey(Agent, null=True, blank=True, on_delete=models.SET_NULL, related_name="calls")
    from_number = models.CharField("from", max_length=64, blank=True)
    to_number = models.CharField("to", max_length=64, blank=True)
    direction = models.CharField(max_length=16, choices=CallDirection.choices, default=CallDirection.INBOUND)
    status = models.CharField(max_length=16, choices=CallStatus.choices, default=CallStatus.RINGING)
    # SequenceNumber of the status callback that set ``status``: callbacks arrive out of order.
    status_sequence = models.IntegerField(null=True, blank=True, editable=False)
    stream_sid = models.CharField("Stream SID", max_length=64, blank=True)
    # Single-use proof that a media socket comes from our own webhook; only the hash is kept.
    stream_token_hash = models.CharField(max_length=64, blank=True, editable=False)
    stream_token_expires_at = models.DateTimeField(null=True, blank=True, editable=False)
    stream_token_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    model = models.CharField(max_length=64, blank=True)
    voice = models.CharField(max_length=32, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField("stream started", null=True, blank=True)
    answered_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    duration_seconds = models.PositiveIntegerField("duration (s)", null=True, blank=True)
    ended_reason = models.CharField(max_length=32, choices=EndedReason.choices, blank=True)
    error = models.TextField(blank=True, help_text="Last error seen on this call.")
    answered_by = models.CharField(max_length=32, blank=True, help_text="Answering-machine detection result.")
    recording = models.FileField(upload_to="recordings/%Y/%m/", blank=True)
    interruptions = models.PositiveIntegerField(default=0, help_text="Times the caller cut the agent off.")
    first_audio_ms = models.PositiveIntegerField(
        "time to first audio (ms)",
        null=True,
        blank=True,
        help_text="Stream start to the agent's first audio.",
    )
    latency_p50_ms = models.PositiveIntegerField("response latency p50 (ms)", null=True, blank=True)
    latency_p95_ms = models.PositiveIntegerField("response latency p95 (ms)", null=True, blank=True)
    cost_usd = models.DecimalField(
        "estimated cost (USD)", max_digits=10, decimal_places=4, null=True, blank=True
    )
    openai_reconnects = models.PositiveIntegerField(
        default=0, help_text="Times the OpenAI session dropped and was reconnected during the call."
    )
    transferred_to = models.CharField(max_length=64, blank=True)
    # Token counts summed over every response.done (and caller transcription), as OpenAI names them.
    usage = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            # Admin call list: newest first, filtered by date and status.
            models.Index(fields=["-created_at"], name="call_created_idx"),
            models.Index(fields=["status", "-created_at"], name="call_status_created_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.call_sid} {self.from_number} → {self.to_number}"


class Role(models.TextChoices):
    CALLER = "caller", "Caller"
    AGENT = "agent", "Agent"


class TurnKind(models.TextChoices):
    SPEECH = "speech", "Speech"
    DTMF = "dtmf", "Key press"


class Turn(models.Model):
    """One utterance. ``position`` is the conversation order, which differs from the order
    transcripts arrive in (the caller's transcription lands after the agent has started)."""

    call = models.ForeignKey(Call, on_delete=models.CASCADE, related_name="turns")
    position = models.PositiveIntegerField()
    role = models.CharField(max_length=8, choices=Role.choices)
    kind = models.CharField(max_length=8, choices=TurnKind.choices, default=TurnKind.SPEECH)
    text = models.TextField(blank=True)
    started_ms = models.PositiveIntegerField("start (ms)", null=True, blank=True)
    ended_ms = models.PositiveIntegerField("end (ms)", null=True, blank=True)
    item_id = models.CharField("OpenAI item id", max_length=64, blank=True)
    interrupted = models.BooleanField(default=False)
    heard_ms = models.PositiveIntegerField(
        null=True, blank=True, help_text="Interrupted agent turns: how much the caller heard."
    )
    latency_ms = models.PositiveIntegerField(
        "response latency (ms)",
        null=True,
        blank=True,
        help_text="Agent turns: from the caller's end of speech to the first agent audio sent.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["call", "position"]
        constraints = [
            # Also the index for "the conversation of one call, in order".
            models.UniqueConstraint(fields=["call", "position"], name="turn_unique_position"),
            # A turn is written once per OpenAI item, even if the writer retries.
            models.UniqueConstraint(
                fields=["call", "item_id"], condition=~Q(item_id=""), name="turn_unique_item"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_role_display()}: {self.text[:60]}"


class ToolCall(models.Model):
    """One function call the model made, with what it got back."""

    call = models.ForeignKey(Call, on_delete=models.CASCADE, related_name="tool_calls")
    position = models.PositiveIntegerField(help_text="Place in the conversation, like Turn.position.")
    name = models.CharField(max_length=64)
    openai_call_id = models.CharField("OpenAI call id", max_length=64, blank=True)
    arguments = models.JSONField(default=dict, blank=True)
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["call", "position"]
        indexes = [
            # The call page merges tool calls into the conversation by position.
            models.Index(fields=["call", "position"], name="toolcall_call_position_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.name}({self.openai_call_id})"


class AnalysisPlan(models.Model):
    """What to learn from every call of one agent once it ends (issue 16). Each save that
    changes what is asked makes a new ``AnalysisPlanVersion``; analyses point at the version
    that produced them."""

    agent = models.OneToOneField(Agent, on_delete=models.CASCADE, related_name="analysis_plan")
    enabled = models.BooleanField(default=True, help_text="Off: this agent's calls are not analysed.")
    summary = models.BooleanField(default=True, help_text="Write a summary of each call.")
    summary_instruction = models.TextField(
        blank=True, help_text="What the summary should say, e.g. 'the order and the delivery address'."
    )
    success_criteria = models.TextField(
        blank=True,
        help_text="In plain words, what a successful call achieves. Blank: no verdict.",
    )
    model = models.CharField(
        max_length=64,
        blank=True,
        help_text="OpenAI model for the analysis. Blank: the ANALYSIS_MODEL setting.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["agent__name"]

    def __str__(self) -> str:
        return f"Analysis plan of {self.agent}"

    @property
    def effective_model(self) -> str:
        return self.model or settings.ANALYSIS_MODEL


class FieldType(models.TextChoices):
    TEXT = "text", "Text"
    NUMBER = "number", "Number"
    YES_NO = "yes_no", "Yes/no"
    CHOICE = "choice", "One of a list"
    DATE = "date", "Date"
    PHONE = "phone", "Phone number"


class AnalysisField(models.Model):
    """One value to extract from each call, in the order the plan lists them."""

    plan = models.ForeignKey(AnalysisPlan, on_delete=models.CASCADE, related_name="fields")
    position = models.PositiveIntegerField(default=0)
    name = models.CharField(
        max_length=64, help_text="Key in the extracted data: lower-case letters, digits and _."
    )
    type = models.CharField(max_length=8, choices=FieldType.choices, default=FieldType.TEXT)
    description = models.CharField(max_length=500, blank=True, help_text="What the model should look for.")
    required = models.BooleanField(
        default=False, help_text="Off: the value may be empty when the call does not say it."
    )
    choices = models.CharField(
        max_length=2000, blank=True, help_text="One of a list only: the choices, separated by commas."
    )

    class Meta:
        ordering = ["plan", "position", "pk"]
        constraints = [models.UniqueConstraint(fields=["plan", "name"], name="analysisfield_unique_name")]

    def __str__(self) -> str:
        return self.name

    @property
    def choice_list(self) -> list[str]:
        return [choice.strip() for choice in self.choices.split(",") if choice.strip()]


class AnalysisPlanVersion(models.Model):
    """A plan as it was when saved: what an analysis asked, kept even after the plan changes."""

    # Kept when its agent (and plan) is deleted: the analyses it produced still say what was asked.
    plan = models.ForeignKey(AnalysisPlan, null=True, on_delete=models.SET_NULL, related_name="versions")
    number = models.PositiveIntegerField()
    definition = models.JSONField(help_text="The plan (calls.analysis.snapshot) and its model.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["plan", "-number"]
        constraints = [models.UniqueConstraint(fields=["plan", "number"], name="planversion_unique_number")]

    def __str__(self) -> str:
        return f"{self.plan.agent if self.plan else 'deleted plan'} v{self.number}"


class AnalysisStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"


class CallAnalysis(models.Model):
    """One analysis of one call. The row is the job's truth: the queue only says "look at
    row N"; a claim (pending -> running) and the result (running -> done) are conditional
    updates, so a row is stored, and its signal sent, once. Re-running adds a row."""

    call = models.ForeignKey(Call, on_delete=models.CASCADE, related_name="analyses")
    plan_version = models.ForeignKey(AnalysisPlanVersion, on_delete=models.PROTECT, related_name="analyses")
    # The analysis the call's end asked for (at most one per call); re-runs are not automatic.
    automatic = models.BooleanField(default=True, editable=False)
    status = models.CharField(max_length=8, choices=AnalysisStatus.choices, default=AnalysisStatus.PENDING)
    summary = models.TextField(blank=True)
    data = models.JSONField("extracted data", default=dict, blank=True)
    success = models.BooleanField(null=True, blank=True)
    reason = models.TextField(blank=True)
    model = models.CharField(max_length=64, blank=True)
    usage = models.JSONField(default=dict, blank=True)
    cost_usd = models.DecimalField(
        "estimated cost (USD)", max_digits=10, decimal_places=6, null=True, blank=True
    )
    error = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=0, help_text="Times a worker claimed this analysis.")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        verbose_name_plural = "call analyses"
        indexes = [
            models.Index(fields=["call", "-created_at"], name="analysis_call_created_idx"),
            models.Index(fields=["status", "started_at"], name="analysis_status_started_idx"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["call"], condition=Q(automatic=True), name="analysis_one_automatic_per_call"
            ),
        ]

    def __str__(self) -> str:
        return f"Analysis of {self.call.call_sid} ({self.get_status_display()})"


class ExpectedEnding(models.TextChoices):
    ANY = "any", "Any"
    AGENT_ENDED = "agent_ended", "The agent ended the call"
    TRANSFERRED = "transferred", "Transferred"
    OPEN = "open", "Still open"


class AgentTest(models.Model):
    """A test of an agent (``calls.agent_tests.Spec``): what the caller says, what the agent
    must and must not do. Kept here, edited in the admin, exported to a JSON file in the
    project's repository and imported back (``manage.py agent_tests``)."""

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="tests")
    name = models.CharField(max_length=120)
    caller_turns = models.JSONField(
        default=list,
        blank=True,
        help_text='What the caller says, in order: ["Hi", "A table for two"]. Or leave it empty and '
        "give a goal: a simulated caller then talks.",
    )
    caller_goal = models.TextField(
        blank=True,
        help_text="Open-ended tests: what the simulated caller wants (a text model plays the caller).",
    )
    caller_persona = models.TextField(blank=True, help_text="Who the simulated caller is and how they talk.")
    max_turns = models.PositiveSmallIntegerField(
        default=6,
        validators=[MinValueValidator(1), MaxValueValidator(20)],
        help_text="The simulated caller's turns at most.",
    )
    expect_tools = models.JSONField(
        default=list,
        blank=True,
        help_text="Tools the agent must call, with the arguments that must match (a subset): "
        '[{"name": "book_table", "arguments": {"party_size": 2}}].',
    )
    forbid_tools = models.JSONField(
        default=list, blank=True, help_text='Tools it must not call: ["transfer_call"].'
    )
    must_say = models.JSONField(default=list, blank=True, help_text="Phrases the agent must say (any case).")
    must_not_say = models.JSONField(default=list, blank=True, help_text="Phrases the agent must not say.")
    ending = models.CharField(max_length=16, choices=ExpectedEnding.choices, default=ExpectedEnding.ANY)
    rubric = models.TextField(blank=True, help_text="Success in plain words, judged by a model. Blank: none.")
    tool_results = models.JSONField(
        default=dict,
        blank=True,
        help_text="Tools not to run, with the result the model gets instead: "
        '{"book_table": {"reference": "R-1"}}.',
    )
    standin = models.JSONField(
        "offline replies",
        default=dict,
        blank=True,
        help_text="What the offline stand-in model answers, in order "
        '({"replies": [...], "variants": [{"instructions_contain": "...", "replies": [...]}]}). '
        "Ignored by --real runs.",
    )
    source_call = models.ForeignKey(
        Call,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="Made from this call.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["agent", "name"]
        constraints = [models.UniqueConstraint(fields=["agent", "name"], name="agenttest_unique_name")]

    def __str__(self) -> str:
        return f"{self.agent}: {self.name}"


class RunMode(models.TextChoices):
    OFFLINE = "offline", "Offline (stand-in)"
    REAL = "real", "Realtime API (text)"


class AgentTestRun(models.Model):
    """One run of one test: each expectation passed or failed, the conversation, the judge."""

    test = models.ForeignKey(AgentTest, on_delete=models.CASCADE, related_name="runs")
    batch = models.CharField(max_length=32, help_text="The runs started together (one command, one button).")
    mode = models.CharField(max_length=8, choices=RunMode.choices, default=RunMode.OFFLINE)
    audio = models.BooleanField(default=False, help_text="A phone call through the real bridge, spoken.")
    passed = models.BooleanField(null=True, help_text="Empty: not finished, or the run itself failed.")
    outcomes = models.JSONField(default=list, blank=True)
    transcript = models.JSONField(default=list, blank=True)
    judge_reason = models.TextField(blank=True)
    model = models.CharField(max_length=64, blank=True)
    usage = models.JSONField(default=dict, blank=True)
    cost_usd = models.DecimalField(
        "estimated cost (USD)", max_digits=10, decimal_places=6, null=True, blank=True
    )
    error = models.TextField(blank=True)
    started_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-started_at", "-pk"]
        indexes = [models.Index(fields=["test", "-started_at"], name="testrun_test_started_idx")]

    def __str__(self) -> str:
        verdict = {True: "passed", False: "failed", None: "not finished"}[self.passed]
        return f"{self.test.name}: {verdict}"
