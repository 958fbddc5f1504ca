"""A fresh install answers calls: create one default agent (blank phone number)."""

from django.db import migrations

INSTRUCTIONS = (
    "You are a friendly, concise assistant answering the phone. Speak naturally, in short "
    "sentences, as on a phone call. Ask one question at a time. If you do not know something, "
    "say so. Reply in the caller's language."
)


def create_default_agent(apps, schema_editor):
    Agent = apps.get_model("calls", "Agent")
    if not Agent.objects.filter(phone_number="").exists():
        Agent.objects.create(
            name="Default agent",
            phone_number="",
            instructions=INSTRUCTIONS,
            greeting="Hello! Thanks for calling. How can I help you today?",
        )


def remove_default_agent(apps, schema_editor):
    apps.get_model("calls", "Agent").objects.filter(name="Default agent", phone_number="").delete()


class Migration(migrations.Migration):
    dependencies = [("calls", "0001_initial")]
    operations = [migrations.RunPython(create_default_agent, remove_default_agent)]
