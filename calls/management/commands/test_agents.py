"""Run agents' tests: offline against the stand-in (the default, for CI), or --real against
the Realtime API in text; a JUnit XML file for any CI; tests kept in a JSON file."""

from __future__ import annotations

import json
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from calls import agent_testing
from calls.agent_tests import SpecError, describe, line_from_data
from calls.models import Agent, AgentTest, AgentTestRun


def junit_xml(reports: list[agent_testing.Report], seconds: float) -> bytes:
    """One <testcase> per test; a test that failed any of its runs is a <failure> whose
    message gives its score (7/10) and whose text lists what failed."""
    failures = sum(1 for report in reports if not report.passed)
    suite = ET.Element(
        "testsuite",
        name="agent tests",
        tests=str(len(reports)),
        failures=str(failures),
        errors="0",
        time=f"{seconds:.3f}",
    )
    for report in reports:
        took = sum(
            (run.finished_at - run.started_at).total_seconds() for run in report.runs if run.finished_at
        )
        case = ET.SubElement(
            suite, "testcase", classname=report.test.agent.name, name=report.test.name, time=f"{took:.3f}"
        )
        if not report.passed:
            failure = ET.SubElement(case, "failure", message=f"passed {report.score} runs")
            failure.text = "\n".join(report.failures())
            failed = next(run for run in report.runs if not run.passed)
            conversation = describe(line_from_data(data) for data in failed.transcript)
            ET.SubElement(case, "system-out").text = conversation or "(no conversation)"
    return bytes(ET.tostring(suite, encoding="utf-8", xml_declaration=True))


class Command(BaseCommand):
    help = (
        "Run agents' tests (AgentTest rows) and store each run. Offline by default: the model is "
        "the stand-in, scripted by each test, and the rubric is judged by the fake Responses API, "
        "so it needs no key and costs nothing. --real holds the conversations with the Realtime "
        "API in text. Exits 1 if any test failed any run."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--agent", help="Only this agent's tests (its name).")
        parser.add_argument("--test", action="append", help="Only the test(s) with this name.")
        parser.add_argument("--real", action="store_true", help="Against the Realtime API (OPENAI_API_KEY).")
        parser.add_argument(
            "--audio",
            action="store_true",
            help="As phone calls through the real server and bridge, the caller's turns spoken (espeak-ng).",
        )
        parser.add_argument("--runs", type=int, default=1, help="Runs per test; the score shows flaky tests.")
        parser.add_argument("--junit-xml", metavar="FILE", help="Also write the results as JUnit XML.")
        parser.add_argument(
            "--import",
            dest="import_file",
            metavar="FILE",
            help="First create or update tests from this JSON file (by agent and name), then run them.",
        )
        parser.add_argument(
            "--export",
            metavar="FILE",
            help="Write the selected tests to this JSON file ('-': stdout); run nothing.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["runs"] < 1:
            raise CommandError("--runs must be 1 or more.")
        tests = AgentTest.objects.select_related("agent").order_by("agent__name", "name")
        if options["import_file"]:
            names = self._import(options["import_file"])
            tests = tests.filter(name__in=names)
        if options["agent"]:
            agent = Agent.objects.filter(name=options["agent"]).first()
            if agent is None:
                raise CommandError(f"No agent is named {options['agent']!r}.")
            tests = tests.filter(agent=agent)
        if options["test"]:
            tests = tests.filter(name__in=options["test"])
        selected = list(tests)
        if options["export"]:
            self._export(selected, options["export"])
            return
        if not selected:
            raise CommandError("No test matches. Make one from a call in the admin, or --import a file.")
        started = time.monotonic()
        reports = agent_testing.run_tests(
            selected,
            real=options["real"],
            audio=options["audio"],
            runs=options["runs"],
            progress=self._progress,
        )
        if sys.stdout.isatty():
            self.stdout.write("")
        for report in reports:
            verdict = self.style.SUCCESS("PASS") if report.passed else self.style.ERROR("FAIL")
            self.stdout.write(f"{verdict} {report.test.agent.name} / {report.test.name}  {report.score}")
            for failure in report.failures():
                self.stdout.write(f"     {failure}")
        passed = sum(1 for report in reports if report.passed)
        mode = ("Realtime API" if options["real"] else "offline") + (", audio" if options["audio"] else "")
        self.stdout.write(f"{passed} of {len(reports)} tests passed ({mode}, {options['runs']} run(s) each).")
        if options["junit_xml"]:
            Path(options["junit_xml"]).write_bytes(junit_xml(reports, time.monotonic() - started))
        if passed < len(reports):
            sys.exit(1)

    def _progress(self, test: AgentTest, run: AgentTestRun) -> None:
        mark = "." if run.passed else "F"
        self.stdout.write(mark, ending="")
        self.stdout.flush()

    def _import(self, path: str) -> list[str]:
        try:
            document = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise CommandError(f"Cannot read {path}: {exc}") from exc
        try:
            created, updated, agents = agent_testing.import_tests(document)
        except SpecError as exc:
            raise CommandError(f"{path}: {exc}") from exc
        made = f"; agent(s) made from the file: {', '.join(agents)}" if agents else ""
        self.stdout.write(f"Imported {path}: {created} new, {updated} updated{made}.")
        return [str(item["name"]) for item in document["tests"]]

    def _export(self, tests: list[AgentTest], path: str) -> None:
        text = json.dumps(agent_testing.export_tests(tests), indent=2, ensure_ascii=False) + "\n"
        if path == "-":
            self.stdout.write(text, ending="")
            return
        Path(path).write_text(text)
        self.stdout.write(f"Wrote {len(tests)} test(s) to {path}.")
