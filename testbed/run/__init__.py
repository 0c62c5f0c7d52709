"""Carry out a plan on this machine: the library API under the CLI.

    run(experiment, results_root, on_event=callback, repetition=1) -> RunResult

The core never prints; it reports through events (also appended to events.jsonl). The
rooms: preflight (checks), swarm (bring-up, actions on hosts, teardown), sampler (one tick
of measurement), policies (rules that push events), executor (the timeline and the loop),
summary (summary.json, manifest.json). Whatever happens, teardown removes every container,
veth and bridge of the run, and summary.json is written: "complete", "timeout", or
"failed" with what was measured.
"""
from __future__ import annotations

import gc
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from testbed import facts, runtime, shaping
from testbed.errors import InterruptedAfterRun, TestbedError
from testbed.model import Experiment
from testbed.plan import plan, run_tag
from testbed.results import PIECE_FIELDS, RunDir, write_json, write_plan
from testbed.run.executor import DAEMON_LOST, Executor
from testbed.run.interrupts import signals_deferred
from testbed.run.preflight import BringupLock, free_control_block, machine_fits, preflight
from testbed.run.sampler import Sampler
from testbed.run.homes import home_summary
from testbed.run.summary import cpu_seconds, image_packages, manifest, summarize, written_experiment
from testbed.run.swarm import Swarm

EventSink = Callable[[dict], None]
SHARD_WAIT_S = 600.0     # a shard waits this long for the coordinator's next word (the others' bring-up)


def memory_and_deaths(p, error: str | None, status: str, deaths: list[dict], ooms: list[str],
                      resources: dict, rd) -> str | None:
    """The run's error, with what happened to its containers: deaths under the run, and
    memory limits that killed a process (Docker's oom event) or that a container kept
    hitting (its cgroup's count, for a client that thrashed instead of being killed)."""
    if deaths and error is None and status != "complete":
        error = "containers died during the run: " + ", ".join(
            f"{d['host']} ({'out of memory' if d['oom'] else 'exit ' + str(d['exit_code'])})" for d in deaths)
    for host in ooms:
        rd.event("out_of_memory", host=host)
    # reached: counted by the cgroup, or its high-water mark at the limit (a client thrashing in
    # reclaim may never make the count move: seen with deluged under 32 MiB)
    hit = sorted(n for n, r in resources.items() if r and p.host(n).memory_limit
                 and (r.get("limit_hits") or r["mem_peak_bytes"] >= 0.99 * p.host(n).memory_limit))
    pressed = sorted(set(ooms) | set(hit)) if status != "complete" else ooms
    if not pressed:
        return error
    note = f"{', '.join(pressed)}: the container's memory limit (limits.memory) was reached"
    if error is None:
        return note
    if error != "interrupted" and "out of memory" not in error:
        return f"{error} ({note})"
    return error


@dataclass
class RunResult:
    run_dir: Path
    status: str
    summary: dict

    @property
    def ok(self) -> bool:
        return self.status == "complete"


def new_run_id(exp: Experiment, repetition: int = 1) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    rep = f"-r{repetition}" if exp.repetitions > 1 else ""
    return f"{exp.name}-{stamp}{rep}-{secrets.token_hex(3)}"


def run(exp: Experiment, results_root: Path, on_event: EventSink | None = None, *, repetition: int = 1,
        keep_data: bool = False, sample_interval: float = 1.0, run_id: str | None = None,
        shard=None) -> RunResult:
    """Run one repetition of the experiment; raises only for errors before anything starts.
    `shard` (workers.shard.ShardRun): only this worker's share of a swarm spread over several."""
    emit = on_event or (lambda e: None)
    docker_client = runtime.docker_client()
    run_id = shard.spec.shard_run_id if shard else (run_id or new_run_id(exp, repetition))
    lock = BringupLock()
    try:
        return _run(exp, Path(results_root), emit, docker_client, run_id, lock, repetition, keep_data,
                    sample_interval, shard)
    finally:
        lock.release()


def _run(exp: Experiment, results_root: Path, emit: EventSink, docker_client, run_id: str, lock: BringupLock,
         repetition: int, keep_data: bool, sample_interval: float, shard=None) -> RunResult:
    whole = plan(exp, run_id, block=free_control_block(run_tag(run_id)), repetition=repetition)
    p = whole
    if shard is not None:
        shard.whole, p = whole, shard.spec.cut(whole)
    imgs = preflight(p, docker_client)
    cpu_warning = machine_fits(p, results_root)

    rd = RunDir(results_root.resolve() / run_id)   # absolute: it is bind-mounted
    shaper = shaping.choose(p.shaper, facts.traffic_control()["netem"])()
    written, trace_hashes = written_experiment(exp, whole, shaper.name)
    (rd.path / "experiment.yaml").write_text(written)
    write_plan(rd.path, p)
    man = manifest(p, imgs, exp.seed, exp.repetitions)
    man["traces"] = trace_hashes
    if shard is not None:
        man["shard"] = {"swarm_run_id": shard.spec.run_id, "worker": shard.spec.worker,
                        "placement": shard.spec.placement, "underlays": shard.spec.underlays}
    write_json(rd.path / "manifest.json", man)
    emit(rd.event("run_start", run_id=run_id, run_dir=str(rd.path), hosts=len(p.hosts), t_min_s=p.t_min_s,
                  events=len(p.timeline)))
    if cpu_warning:
        emit(rd.event("warning", message=cpu_warning))
    sw = Swarm(p, rd, emit, docker_client, imgs, keep_data, shaper)
    if shard is not None:
        sw.whole = whole
    ex: Executor | None = None
    status, error, sha_ok, wire, t_end, cpu, carriers = "failed", None, {}, {}, None, None, {}
    try:
        try:
            sw.start_hosts()
        finally:
            lock.release()
        if shard is not None:
            emit(rd.event("tunnels", count=shard.joined(p)))
        sw.make_content()
        man["image_packages"] = image_packages(sw)
        write_json(rd.path / "manifest.json", man)
        if "tracker" in sw.hosts:
            sw.start_tracker()
        if shard is not None:
            shard.sync.mark("ready")
            shard.sync.wait("go", SHARD_WAIT_S)
            sw.announced_seeders = len(whole.by_role("seeder"))
        sw.start_clients()
        man["client_versions"] = sw.versions
        write_json(rd.path / "manifest.json", man)
        sw.start_seeders()
        if shard is not None:
            shard.sync.mark("seeded")
            shard.sync.wait("start", SHARD_WAIT_S)
        sampler = Sampler(p, rd, sw.drivers, {n: h.pid for n, h in sw.hosts.items()}, emit, time.monotonic(),
                          sw.flow_handles)
        sampler.start()
        # one time origin for every file: events' t counts from the swarm's start as the
        # samples' does (the bring-up's events before it have negative t)
        rd.t0 = time.time() - sampler.now()
        sw.start_carriers(sampler.now, time.time() - sampler.now())
        ex = Executor(p, sw, sampler, rd, emit, sample_interval)
        if shard is not None:
            ex.barrier = shard.sync
            rd.add_table("pieces", PIECE_FIELDS)        # its peers' pieces, for the merge's availability
        emit(rd.event("swarm_start", leechers=len(p.by_role("leecher")), t_min_s=p.t_min_s))
        cpu0, wall0 = cpu_seconds(), time.monotonic()
        # What the bring-up left (the Docker SDK's, Mininet's, the plan's: hundreds of thousands
        # of objects) is set aside from garbage collection while the swarm runs: a full
        # collection walks every tracked object, and in a 100-peer swarm collections took
        # about 1.5 s of the testbed's 10 s of CPU. Put back once it ends.
        try:
            gc.freeze()
            status = ex.run()
        finally:
            gc.unfreeze()
            with signals_deferred() as early:      # the sampler's handles keep namespaces alive
                t_end = sampler.now()
                ex.slow.shutdown(wait=True)
                used = cpu_seconds() - cpu0
                cpu = {"cpu_s": round(used, 3), "wall_s": round(time.monotonic() - wall0, 3),
                       "share_of_core": round(used / max(time.monotonic() - wall0, 1e-9), 4),
                       "sampler": sampler.cpu.as_dict()}
                sampler.close()
            if early:
                raise KeyboardInterrupt
    except KeyboardInterrupt:
        error = "interrupted"
    except TestbedError as exc:
        error = str(exc)
    except Exception as exc:  # unknown: keep the traceback in the event log
        import traceback
        error = f"{exc.__class__.__name__}: {exc}"
        rd.event("traceback", text=traceback.format_exc())
    finally:
        # a second Ctrl-C (or a SIGTERM) must not cut the teardown short: it would leave
        # containers, veths and bridges behind
        with signals_deferred() as deferred:
            deaths, ooms = sw.stop_watching()
            if sw.watch is not None and sw.watch.lost is not None and error is None:
                # the daemon went away as the swarm ended: the executor may not have seen it
                emit(rd.event("docker_daemon_lost", t_swarm=None))
                error = DAEMON_LOST
            # a leecher whose container died before it completed: the swarm did not complete
            # (all_done counts it as gone, so the executor ends the run as if it had)
            if status == "complete" and any(d["host"] in ex.peers and ex.peers[d["host"]].completed_s is None
                                            for d in deaths if ex and p.host(d["host"]).role == "leecher"):
                status = "failed"
            if sw.hosts:
                wire = sw.read_wire()
                sw.read_resources()
            error = memory_and_deaths(p, error, status, deaths, ooms, sw.resources, rd)
            if sw.hosts:
                try:
                    carriers = sw.stop_carriers()
                except Exception as exc:   # measured what could be; the run's status says the rest
                    rd.event("teardown_error", step="households", error=str(exc))
            sw.stop_clients()
            sw.stop_element()
            sha_ok = sw.verify() if sw.hosts else {}
            if status == "complete" and not all(sha_ok.get(n) for n, st in (ex.peers.items() if ex else ())
                                                if st.completed_s is not None and st.left_reason != "cut"):
                status, error = "failed", "a peer's file differs from the origin's (sha256)"
            summary = summarize(sw, ex, status if error is None else "failed", error, sha_ok, wire, t_end, cpu)
            if p.homes:
                try:
                    write_json(rd.path / "households.json", home_summary(sw, ex, carriers, t_end))
                except Exception as exc:   # the rest of the results and the teardown go on
                    rd.event("teardown_error", step="households.json", error=f"{exc.__class__.__name__}: {exc}")
            write_json(rd.path / "summary.json", summary)
            if shard is not None and shard.devices:
                emit(rd.event("tunnels_counted", **shard.tunnel_counters()))
            emit(rd.event("teardown"))
            teardown = sw.close()
            man["ended"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            man["teardown"] = teardown
            write_json(rd.path / "manifest.json", man)
            emit(rd.event("run_end", status=summary["status"], error=error))
            if deferred:
                rd.event("interrupts_deferred", signals=deferred)
            rd.close()
    result = RunResult(rd.path, summary["status"], summary)
    if deferred:
        raise InterruptedAfterRun(result)
    return result
