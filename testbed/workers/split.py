"""One experiment spread over the workers of an inventory: the coordinator's side.

The experiment is read and planned here (bad input is refused before anything reaches a
worker), the plan's hosts placed on the workers (plan/placement.py), each worker's clock
offset measured (if the inventory names the coordinator's underlay address), and each
worker sent the experiment's directory and its shard's spec. playbooks/shard.yml then starts
every shard and keeps them in step (workers/shard.py), and playbooks/shard-end.yml ends
whatever still runs, brings back what results are left and removes the workers' copies.
The shards' run directories come back under <run>/shards/<worker>/ and are merged into <run>
(workers/merge.py).

A worker that fails to bring its shard up stops the swarm before it starts. A worker lost
once the swarm runs is reported by name in the summary (status failed); the others run on
to their own end (their leechers done, or the timeout) and their results are kept. The lost
worker's shard, no longer answered by the coordinator's clock responder, ends itself
(workers/shard.py's heartbeat).
"""
from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path

from testbed.errors import InputError, RunError
from testbed.results import write_json, write_plan

READY_S = 600           # each step of bring-up on a worker (images start, seeders verify)
END_S = 120             # a shard's teardown, once told to end
# a shard's files kept in its own directory only (shards/<worker>/), not merged: its hosts'
# own directories (clients' logs, captures, downloads' records), its delay element's counters
NOT_MERGED = ["hosts/", "delayer-stats.json"]


def heartbeat_responder(address: str):
    """The clock's responder, kept up while the shards run: their heartbeat asks it."""
    from testbed.workers import clock
    try:
        return clock.Responder(address)
    except OSError as exc:
        raise RunError(f"clock: cannot answer the workers' heartbeat on {address}:{clock.PORT} here "
                       f"({exc.strerror})") from None


def split_run(experiment: Path, inventory: Path, results_root: Path,
              progress: Callable[[str], None] | None = None) -> tuple[Path, dict]:
    from testbed.model import load_experiment
    from testbed.plan import plan
    from testbed.plan.placement import loads, place, with_placement
    from testbed.plan.shard import not_splittable
    from testbed.run import new_run_id
    from testbed.workers import images as worker_images
    from testbed.workers.ansible import clock_offsets, run_playbook
    from testbed.workers.inventory import load_inventory
    from testbed.workers.merge import ShardResult, copy_common, merge
    from testbed.workers.remote import MARGIN_S, extract_run, pack_experiment
    from testbed.workers.shard import ShardSpec
    say = progress or (lambda _line: None)
    exp = load_experiment(experiment)                   # InputError: nothing has started
    if exp.repetitions > 1:
        raise InputError(f"{experiment}: repetitions: a swarm spread over workers runs one repetition at a time "
                         f"(run the file once per repetition)")
    workers = load_inventory(inventory)
    run_id = new_run_id(exp)
    whole = plan(exp, run_id)
    if (why := not_splittable(whole)) is not None:
        raise InputError(f"{experiment}: {why}; run it with `testbed run` or `testbed workers run`")
    placement = place(whole, [w.worker() for w in workers])
    used = [w for w in workers if w.name in placement.values()]
    names = [w.name for w in used]
    say("placement: " + ", ".join(f"{w}: {sum(1 for v in placement.values() if v == w)} hosts "
                                   f"({load:.0f} CPU s expected)" for w, load in loads(whole, placement).items()))
    job = f"{exp.name}-{run_id.rsplit('-', 1)[-1]}"
    with tempfile.TemporaryDirectory(prefix="testbed-split-") as local:
        pack_experiment(experiment.resolve().parent, Path(local) / "experiment.tgz")    # InputError if too big
        # before anything starts: a worker that cannot get its images fails the split here
        copied = worker_images.ensure(inventory, names, worker_images.needed(whole, placement), job, Path(local), say)
        out = results_root.resolve() / run_id
        (out / "shards").mkdir(parents=True)
        write_plan(out, with_placement(whole, placement))
        coordinator = next((w.vars["testbed_coordinator"] for w in workers if "testbed_coordinator" in w.vars), None)
        offsets, clock_problems = ({}, [])
        if coordinator:
            say(f"clocks: probing {coordinator} from each worker")
            offsets, clock_problems = clock_offsets(inventory, str(coordinator), names)
        shards = {w: ShardResult(w, None, offset_s=offsets[w].seconds if w in offsets else 0.0,
                                 offset_error_s=offsets[w].error if w in offsets else None) for w in names}
        underlays = {w.name: w.underlay for w in used}
        for w in names:
            # a worker that answered the clock probes keeps asking: its heartbeat (workers/shard.py)
            (Path(local) / f"spec-{w}.json").write_text(ShardSpec(
                run_id, w, workers[0].name, placement, underlays,
                coordinator=str(coordinator) if w in offsets else None).to_json())
        common = {"testbed_job": job, "testbed_local": local, "testbed_file": experiment.name}
        r = end = None
        responder = heartbeat_responder(str(coordinator)) if offsets else None
        try:
            # the shard's own limit: its experiment, its teardown, and its two waits for the others
            r = run_playbook("shard", inventory, {**common, "testbed_seconds": int(exp.timeout + MARGIN_S + 2 * READY_S),
                                                  "testbed_ready_seconds": READY_S}, say, workers_named=names)
        finally:
            # interrupted or not: every shard ended, what results came back merged, then the
            # interrupt (if any) goes on
            fetched = [w for w in names if (Path(local) / f"results-{w}.tgz").exists()]
            try:
                end = run_playbook("shard-end", inventory, {**common, "testbed_end_seconds": END_S,
                                                            "testbed_fetched": ",".join(fetched)}, say,
                                   workers_named=names)
            finally:
                if responder is not None:
                    responder.close()
            for w in names:
                outcome = r.workers.get(w) if r is not None else None
                if outcome is not None and not outcome.good:
                    shards[w].problem = ("lost: " if outcome.unreachable else "") + outcome.problem()
                elif outcome is None:
                    shards[w].problem = "the coordinator was interrupted" if r is None else \
                        f"Ansible reported nothing of it ({r.status})"
                packed = Path(local) / f"results-{w}.tgz"
                if packed.exists():
                    try:
                        shards[w].run_dir = extract_run(packed, out / "shards" / w, w)
                    except RunError as exc:
                        shards[w].problem = shards[w].problem or str(exc)
                if w in end.workers and not end.workers[w].good and shards[w].problem is None:
                    shards[w].problem = end.workers[w].problem()
            copy_common(out, list(shards.values()))
            summary = merge(out, run_id, json.loads((out / "plan.json").read_text()), placement,
                            list(shards.values()))
            write_json(out / "manifest.json", {
                "run_id": run_id, "experiment": exp.name, "inventory": str(inventory), "workers": names,
                "placement": placement, "clock_problems": clock_problems, "images_copied": copied,
                "clock": "each worker's offset measured over the underlay" if coordinator else
                         "not measured (the inventory names no testbed_coordinator): offsets taken as 0",
                "not_merged": NOT_MERGED})
    return out, summary
