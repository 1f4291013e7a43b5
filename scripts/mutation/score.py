"""One line per module: killed/total and the score; then each surviving mutant (file:line operator).

Run with cosmic-ray's own interpreter (scripts/mutation/run does). Killed counts timeouts too (a mutant
that hangs the tests is caught); skipped mutants (filtered operators, annotations, out of scope) and
incompetent ones (the mutated module did not even run) are not counted in the score.
"""

from __future__ import annotations

import sys

from cosmic_ray.work_db import WorkDB, use_db  # type: ignore[import-not-found]  # own venv
from cosmic_ray.work_item import TestOutcome, WorkerOutcome  # type: ignore[import-not-found]  # own venv


def main(module: str, db_path: str) -> None:
    killed = survived = pending = incompetent = 0
    survivors: list[str] = []
    with use_db(db_path, WorkDB.Mode.open) as db:
        results = dict(db.results)
        for item in db.work_items:
            result = results.get(item.job_id)
            if result is None:
                pending += 1
                continue
            if result.worker_outcome == WorkerOutcome.SKIPPED:
                continue
            if result.test_outcome == TestOutcome.INCOMPETENT:
                incompetent += 1
            elif result.test_outcome == TestOutcome.SURVIVED:
                survived += 1
                spec = item.mutations[0]
                survivors.append(f"  survived {spec.module_path}:{spec.start_pos[0]} {spec.operator_name}")
            else:
                killed += 1
    total = killed + survived
    score = 100.0 * killed / total if total else 0.0
    note = f" ({pending} not run: budget)" if pending else ""
    note += f" ({incompetent} incompetent, not counted)" if incompetent else ""
    print(f"{module}: {killed}/{total} killed, {score:.1f} %{note}")
    print("\n".join(survivors))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
