"""Let the default agent end calls: hanging up is the first thing users ask for."""

from django.db import migrations


def enable_end_call(apps, schema_editor):
    Agent = apps.get_model("calls", "Agent")
    for agent in Agent.objects.filter(name="Default agent", phone_number=""):
        if not agent.tools:
            agent.tools = ["end_call"]
            agent.save(update_fields=["tools"])


class Migration(migrations.Migration):
    dependencies = [("calls", "0004_agent_actions")]
    operations = [migrations.RunPython(enable_end_call, migrations.RunPython.noop)]
