"""Mark mutants as skipped that are out of scope or equivalent by construction:

- inside type annotations: with `from __future__ import annotations` (every module here) annotations are
  never evaluated, so `X | None` turned into `X & None` changes nothing;
- outside the functions a module's configuration names in `[mutation.only]` (`"path" = ["name", ...]`),
  for a file of which only a part belongs to the behaviour under test (e.g. the manager's token branch).

    skip_annotations.py SESSION.sqlite CONFIG.toml   (cosmic-ray's interpreter, after `cosmic-ray init`)
"""

from __future__ import annotations

import ast
import sys
import tomllib
from pathlib import Path

from cosmic_ray.work_db import WorkDB, use_db  # type: ignore[import-not-found]  # own venv
from cosmic_ray.work_item import WorkerOutcome, WorkResult  # type: ignore[import-not-found]  # own venv

Span = tuple[tuple[int, int], tuple[int, int]]


def _annotation_spans(source: str) -> list[Span]:
    spans: list[Span] = []
    for node in ast.walk(ast.parse(source)):
        found: list[ast.expr | None] = []
        if isinstance(node, ast.arg):
            found.append(node.annotation)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            found.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            found.append(node.annotation)
        for expr in found:
            if expr is not None and expr.end_lineno is not None and expr.end_col_offset is not None:
                spans.append(((expr.lineno, expr.col_offset), (expr.end_lineno, expr.end_col_offset)))
    return spans


def _function_spans(source: str, names: list[str]) -> list[Span]:
    return [
        ((node.lineno, 0), (node.end_lineno or node.lineno, 10**6))
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name in names
    ]


def main(db_path: str, config_path: str) -> None:
    only: dict[str, list[str]] = (
        tomllib.loads(Path(config_path).read_text()).get("mutation", {}).get("only", {})
    )
    spans: dict[Path, list[Span]] = {}
    scopes: dict[Path, list[Span] | None] = {}
    skipped = 0
    with use_db(db_path, WorkDB.Mode.open) as db:
        done = {job_id for job_id, _ in db.results}
        for item in db.work_items:
            if item.job_id in done:
                continue
            mutation = item.mutations[0]
            path = Path(mutation.module_path)
            if path not in spans:
                source = path.read_text()
                spans[path] = _annotation_spans(source)
                names = only.get(str(path))
                scopes[path] = _function_spans(source, names) if names is not None else None
            # parso positions: 1-based lines, 0-based columns, as ast's.
            start = tuple(mutation.start_pos)
            scope = scopes[path]
            why = ""
            if any(low <= start < high for low, high in spans[path]):
                why = "in an annotation"
            elif scope is not None and not any(low <= start < high for low, high in scope):
                why = "outside the functions under test"
            if why:
                db.set_result(item.job_id, WorkResult(worker_outcome=WorkerOutcome.SKIPPED, output=why))
                skipped += 1
    print(f"skipped {skipped} mutants in annotations or out of scope")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
