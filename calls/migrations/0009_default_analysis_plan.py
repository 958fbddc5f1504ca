"""A fresh install analyses its calls: the default agent gets an analysis plan (version 1)."""

from django.db import migrations

SUMMARY_INSTRUCTION = "What the caller wanted and how the call ended, in two or three sentences."
SUCCESS_CRITERIA = (
    "The caller got an answer to their question or their request was handled (for example a "
    "table booked), and the agent did not leave them without a next step."
)
FIELDS = [
    {"name": "caller_name", "type": "text", "description": "The caller's name, if they gave it."},
    {"name": "topic", "type": "text", "description": "What the caller called about, in a few words."},
    {
        "name": "callback_requested",
        "type": "yes_no",
        "description": "Whether the caller asked to be called back by a person.",
        "required": True,
    },
    {"name": "callback_number", "type": "phone", "description": "The number the caller asked to be called back on."},
]


def create_plan(apps, schema_editor):
    Agent = apps.get_model("calls", "Agent")
    AnalysisPlan = apps.get_model("calls", "AnalysisPlan")
    AnalysisField = apps.get_model("calls", "AnalysisField")
    AnalysisPlanVersion = apps.get_model("calls", "AnalysisPlanVersion")
    agent = Agent.objects.filter(name="Default agent", phone_number="").first()
    if agent is None or AnalysisPlan.objects.filter(agent=agent).exists():
        return
    plan = AnalysisPlan.objects.create(
        agent=agent, summary=True, summary_instruction=SUMMARY_INSTRUCTION, success_criteria=SUCCESS_CRITERIA
    )
    for position, field in enumerate(FIELDS, start=1):
        AnalysisField.objects.create(
            plan=plan,
            position=position,
            name=field["name"],
            type=field["type"],
            description=field["description"],
            required=field.get("required", False),
        )
    # The shape calls.analysis.snapshot writes, plus the model (blank: ANALYSIS_MODEL).
    definition = {
        "summary": True,
        "summary_instruction": SUMMARY_INSTRUCTION,
        "fields": [
            {
                "name": f["name"],
                "type": f["type"],
                "description": f["description"],
                "required": f.get("required", False),
            }
            for f in FIELDS
        ],
        "success_criteria": SUCCESS_CRITERIA,
        "model": "",
    }
    AnalysisPlanVersion.objects.create(plan=plan, number=1, definition=definition)


def remove_plan(apps, schema_editor):
    apps.get_model("calls", "AnalysisPlan").objects.filter(agent__name="Default agent").delete()


class Migration(migrations.Migration):
    dependencies = [("calls", "0008_post_call_analysis")]
    operations = [migrations.RunPython(create_plan, remove_plan)]
