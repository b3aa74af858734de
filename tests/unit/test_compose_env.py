"""docker-compose.yml and env.example agree: every setting the stack reads from `.env` is documented
there with the default the stack uses, so that a user who copies env.example changes nothing by it."""

import re
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_every_compose_setting_is_in_env_example_with_its_default() -> None:
    compose = (ROOT / "docker-compose.yml").read_text()
    settings = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*):-([^}]*)\}", compose))
    assert len(settings) > 15
    example = (ROOT / "env.example").read_text()
    missing = [f"{name}={default}" for name, default in sorted(settings)
               if not re.search(rf"^(# )?{name}={re.escape(default)}$", example, re.MULTILINE)]
    assert missing == []


def test_the_stack_interpolates_nothing_without_a_default() -> None:
    compose = (ROOT / "docker-compose.yml").read_text()
    assert re.findall(r"\$\{[A-Z][A-Z0-9_]*\}|\$[A-Z]", compose) == []
