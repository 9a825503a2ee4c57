"""Result rows, the markdown table and the results directory."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the results table. `met` is None where there is no target."""

    benchmark: str
    metric: str
    ours: str
    baseline: str
    ratio: str
    target: str
    met: bool | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def ratio(ours: float, baseline: float, digits: int = 2) -> str:
    if baseline == 0 or math.isnan(ours) or math.isnan(baseline):
        return "—"
    return f"{ours / baseline:.{digits}f}"


def markdown_table(rows: list[Row]) -> str:
    head = "| benchmark | metric | ours | baseline | ratio | target | met? |\n"
    head += "|---|---|---|---|---|---|---|\n"
    lines = []
    for r in rows:
        met = "—" if r.met is None else ("yes" if r.met else "**no**")
        lines.append(f"| {r.benchmark} | {r.metric} | {r.ours} | {r.baseline} | {r.ratio} "
                     f"| {r.target} | {met} |")
    return head + "\n".join(lines) + "\n"


def write_results(results_dir: Path, name: str, payload: dict[str, Any], rows: list[Row],
                  preamble: str = "") -> tuple[Path, Path]:
    """`NAME.json` (everything, raw values included) and `NAME.md` (the table)."""
    results_dir.mkdir(parents=True, exist_ok=True)
    json_path = results_dir / f"{name}.json"
    md_path = results_dir / f"{name}.md"
    body = {**payload, "table": [r.to_json() for r in rows]}
    json_path.write_text(json.dumps(body, indent=1, default=_default) + "\n")
    md_path.write_text(preamble + markdown_table(rows))
    return json_path, md_path


def _default(obj: object) -> object:
    if hasattr(obj, "to_json"):
        return obj.to_json()
    if is_dataclass(obj) and not isinstance(obj, type):
        return asdict(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")
