"""The README is the first ten minutes of a newcomer: short, the three commands on its first
screen, and no link to a file that is not there (README.md, docs/*.md and the other READMEs)."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [
    README,
    *sorted((ROOT / "docs").glob("*.md")),
    ROOT / "bench" / "README.md",
    ROOT / "deploy" / "README.md",
]
# [text](target) and ![alt](target); the target ends at the first space or closing parenthesis.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def test_readme_is_at_most_300_lines():
    assert len(README.read_text().splitlines()) <= 300


def test_readme_first_screen_gives_the_three_commands_and_the_env_file():
    first_screen = "\n".join(README.read_text().splitlines()[:40])
    for command in ("make run", "make test", "make demo", "cp .env.example .env"):
        assert command in first_screen, command
    assert "two commands" not in README.read_text().lower()


def relative_links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)  # code is not a link
    targets = []
    for target in LINK.findall(text):
        parts = urlsplit(target)
        if parts.scheme or target.startswith("#"):
            continue  # a web address or a heading of the same page
        targets.append(unquote(parts.path))
    return targets


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_points_to_a_file_that_exists(page):
    missing = [target for target in relative_links(page) if not (page.parent / target).exists()]
    assert not missing, f"{page.relative_to(ROOT)} links to missing files: {missing}"
