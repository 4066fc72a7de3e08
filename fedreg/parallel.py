"""How a sweep's children run: one after another in this process (:func:`run_sequential`), or in parallel
(``--jobs`` > 1, or ``--sweep ray``; :func:`run_parallel`): the parent process
(:class:`fedreg.experiment.Experiment`) opens each child's MLflow run, submits it to a
:class:`~fedreg.pools.Pool` and follows the pool's events (progress, outcomes) until every child ended."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedreg import checkpoint
from fedreg.pools import Pool
from fedreg.progress import SweepProgress
from fedreg.resume import done_fractions
from fedreg.rounds import RunResult
from fedreg.sweep import ChildOutcome, ChildTask, expected_cost, run_order
from fedreg.timelimit import TimeLimitReached, past

if TYPE_CHECKING:  # the experiment calls these functions with itself (an import for types only)
    from fedreg.experiment import Experiment


@dataclass
class Prepared:
    """A child run opened (or re-opened) in the tracking store, ready to train."""

    name: str
    run_id: str
    checkpoint_file: Path | None
    checkpoint: dict[str, Any] | None  # the checkpoint it continues from
    logged_through: int


def run_sequential(exp: Experiment) -> list[RunResult]:
    """The children of ``exp`` one after another in this process: those a resumed sweep had started first,
    then in the spec's order (:func:`fedreg.sweep.run_order`); a failed child of a sweep is recorded and the
    others go on. Once ``--max-time`` has passed, the child running stops at its round's end (recorded in
    ``exp.stopped``) and no other starts (``exp.unstarted``). The results of the children that finished, in
    the spec's order."""
    # equal costs: the started children by the share of their rounds left, then the spec's order
    order = run_order([1.0] * len(exp.specs), done_fractions(exp.specs, exp.checkpoints), longest_first=False)
    done: dict[int, RunResult] = {}
    for n, i in enumerate(order):
        if past(exp.deadline):
            exp.unstarted = unstarted(exp, order[n:])
            break
        try:
            result = exp.run_variant(exp.specs[i], exp.feds[i])
        except TimeLimitReached as stop:
            exp.stopped.append((exp.child_name(exp.specs[i]), stop.round))
            exp.unstarted = unstarted(exp, order[n + 1 :])
            break
        if result is not None:
            done[i] = result
    return [done[i] for i in sorted(done)]


def unstarted(exp: Experiment, indices: list[int]) -> list[str]:
    """The names of the children at ``indices`` that have not finished before."""
    return [
        exp.child_name(exp.specs[i])
        for i in indices
        if not (exp.checkpoints.get(exp.specs[i].key) or {}).get("finished")
    ]


def run_parallel(exp: Experiment, pool: Pool) -> list[RunResult]:
    """The children of ``exp`` in worker processes or Ray tasks, ``pool.capacity`` at a time: those a resumed
    sweep had started first, then the longest expected first (so the sweep does not end waiting for one
    long child; :func:`fedreg.sweep.run_order`); a failed child is recorded and the others go on. The
    results of the children that finished, in the spec's order."""
    specs, feds = exp.specs, exp.feds
    costs = [expected_cost(rs, fed) for rs, fed in zip(specs, feds, strict=True)]
    order = run_order(costs, done_fractions(specs, exp.checkpoints), longest_first=True)
    progress = SweepProgress(len(order), sum(costs), exp.echo, enabled=exp.progress)
    done: dict[int, RunResult] = {}
    running: dict[int, Prepared] = {}
    pending = list(order)
    try:
        while running or (pending and not past(exp.deadline)):
            while pending and len(running) < pool.capacity and not past(exp.deadline):
                i = pending.pop(0)
                prep = exp.prepare(specs[i], feds[i])
                if isinstance(prep, RunResult):
                    done[i] = prep
                    progress.skip(costs[i])
                    continue
                where = pool.submit(child_task(exp, i, prep))
                exp.open_run = None  # the worker ends it
                running[i] = prep
                start = prep.checkpoint["round"] if prep.checkpoint else 0
                progress.started(i, prep.name, specs[i].spec.federation.rounds, costs[i], start, where)
            for event in pool.events(0.5):
                if event[0] == "round":
                    progress.round(event[1], event[2], event[3])
                elif event[0] == "started":
                    progress.moved(event[1], event[2])
                elif event[0] == "done":
                    outcome: ChildOutcome = event[1]
                    prep = running.pop(outcome.index)
                    child_ended(exp, prep, outcome, progress)
                    if outcome.result is not None:
                        done[outcome.index] = outcome.result
    except KeyboardInterrupt:
        pool.stop()
        for prep in running.values():  # what a worker could not mark itself
            exp.tracker.end_run(prep.run_id, "KILLED")
        raise
    finally:
        progress.close()
    exp.unstarted = unstarted(exp, pending)  # --max-time passed before their turn
    return [done[i] for i in range(len(specs)) if i in done]


def child_task(exp: Experiment, i: int, prep: Prepared) -> ChildTask:
    """What a worker needs to train child ``i`` of ``exp`` (opened as ``prep``)."""
    rs = exp.specs[i]
    resume_file = None
    if prep.checkpoint is not None and exp.resume is not None:
        resume_file = str(exp.resume.run_file(rs.key).resolve())
    spool = Path(exp.first.checkpoint.dir).parent / "spool" / checkpoint.safe_part(prep.name)
    return ChildTask(
        index=i,
        rs=rs,
        label=prep.name,
        run_id=prep.run_id,
        tracking_uri=exp.tracker.uri,
        experiment=exp.first.tracking.experiment,
        spool_dir=str(spool.resolve()),
        checkpoint_file=str(prep.checkpoint_file.resolve()) if prep.checkpoint_file else None,
        resume_file=resume_file,
        logged_through=prep.logged_through,
        threads=rs.spec.execution.threads or 1,
        fingerprint=checkpoint.fingerprint(rs.resolved_dict()),
        parent_run_id=exp.parent,
        deadline=exp.deadline,
    )


def child_ended(exp: Experiment, prep: Prepared, outcome: ChildOutcome, progress: SweepProgress) -> None:
    """Record how a child ended: its line on the progress display, and a failure on its run and in
    ``exp.failed``."""
    rs = exp.specs[outcome.index]
    if outcome.status == "FINISHED":
        progress.ended(outcome.index, outcome.status, exp.headline(rs, prep.name, outcome.result))
    elif outcome.stopped_after is not None:  # by --max-time, with a checkpoint: not a failure
        exp.stopped.append((prep.name, outcome.stopped_after))
        progress.ended(
            outcome.index,
            "STOPPED",
            f"{prep.name}: time limit: stopped after round {outcome.stopped_after}, with a checkpoint",
        )
    else:
        # a worker that died could not end its run: end it here (again, harmlessly, otherwise)
        exp.tracker.set_tags(prep.run_id, {"fedreg.failure": (outcome.reason or outcome.status)[:5000]})
        exp.tracker.end_run(prep.run_id, "FAILED" if outcome.status != "KILLED" else "KILLED")
        exp.failed.append((prep.name, outcome.reason or outcome.status))
        progress.ended(outcome.index, outcome.status, f"{prep.name}: {outcome.status}: {outcome.reason}")
    if outcome.spool:
        exp.echo(
            f"warning: {prep.name}: tracking calls that could not be delivered are kept in "
            f"'{outcome.spool}'; send them with: fedreg replay {outcome.spool}"
        )


__all__ = ["Prepared", "child_ended", "child_task", "run_parallel"]
