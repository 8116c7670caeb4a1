"""Versioned prompt files (and their JSON schemas) in `curation/prompts/`.

A prompt is `<name>.<version>.txt` (a `str.format` template), optionally with a JSON schema beside
it, `<name>.<version>.schema.json`. Its `tag` (`name.version-<sha256[:8]>` over template and
schema) goes into the code version of every asset that uses it, so editing a prompt file, even
without bumping its version, marks exactly the outputs made with it stale.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longvila.errors import InputError

PROMPT_DIR = Path(__file__).resolve().parents[1] / "prompts"


@dataclass(frozen=True)
class Prompt:
    name: str
    version: str
    template: str
    schema: dict | None = field(default=None, hash=False, compare=False)
    digest: str = ""

    @property
    def tag(self) -> str:
        return f"{self.name}.{self.version}-{self.digest[:8]}"

    def render(self, **values: Any) -> str:
        try:
            return self.template.format(**values).strip()
        except (KeyError, IndexError, ValueError) as e:
            raise InputError(f"prompt {self.name}.{self.version}", f"cannot render template: {e!r}") from e


def load_prompt(name: str, version: str = "v1", directory: str | Path | None = None) -> Prompt:
    d = Path(directory) if directory else PROMPT_DIR
    path = d / f"{name}.{version}.txt"
    if not path.exists():
        raise InputError(str(path), "prompt file not found")
    template = path.read_text(encoding="utf-8")
    h = hashlib.sha256(template.encode("utf-8"))
    schema = None
    spath = d / f"{name}.{version}.schema.json"
    if spath.exists():
        try:
            schema = json.loads(spath.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise InputError(str(spath), f"invalid JSON schema file: {e}") from e
        h.update(b"\0schema\0")
        h.update(json.dumps(schema, sort_keys=True).encode("utf-8"))
    return Prompt(name=name, version=version, template=template, schema=schema, digest=h.hexdigest())
