"""summary.json and manifest.json of a run, from what was measured (never from the plan's
intentions alone: the plan only says what was asked, next to what happened)."""
from __future__ import annotations

import resource
from datetime import datetime, timezone
from pathlib import Path

from testbed import facts, images, metering, shaping
from testbed.plan import Plan
from testbed.results import FORMAT_VERSION
from testbed.run.hostload import summarize as host_summary
from testbed.run.executor import Executor
from testbed.run.swarm import Swarm
from testbed.shaping import LinkShaper


def cpu_seconds() -> float:
    """CPU time (user + system) of the testbed's own process so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def summarize(sw: Swarm, ex: Executor, status: str, error: str | None, sha_ok: dict, wire: dict,
              t_end: float | None, cpu: dict | None) -> dict:
    p = sw.plan
    seen = ex.sampler.seen if ex else None
    peers = []
    for h in p.hosts:
        if not h.client:
            continue
        st = ex.peers[h.name] if ex else None
        s = seen.last.get(h.name) if seen else None
        up, down = seen.if_bytes(h.name) if seen else (0, 0)
        up_total = (s.bytes_up if s else 0) + (st.carry_up if st else 0)
        down_total = (s.bytes_down if s else 0) + (st.carry_down if st else 0)
        completed_s = st.completed_s if st else None
        completed = completed_s is not None
        policy, amount = h.participant.seeding
        at = ex.completion_bytes.get(h.name) if ex else None
        peers.append({
            "name": h.name, "group": h.group, "role": h.role, "client": h.client,
            "client_version": sw.versions.get(h.name), "profile": h.participant.profile,
            "arrived_s": None if st is None or st.arrived_s is None else round(st.arrived_s, 3),
            "planned_arrival_s": None if h.participant.arrival_s is None else round(h.participant.arrival_s, 3),
            "completed": completed and bool(sha_ok.get(h.name)),
            "completed_at_s": round(completed_s, 3) if completed else None,
            # download time, counted from the peer's own arrival
            "completion_s": round(completed_s - st.arrived_s, 3) if completed and h.role == "leecher" else None,
            "left_s": None if st is None or st.left_s is None else round(st.left_s, 3),
            "left_reason": st.left_reason if st else None,
            "state": st.state if st else None, "sessions": st.sessions if st else 0,
            "t_min_s": round(p.peer_t_min_s[h.name], 3) if h.name in p.peer_t_min_s else None,
            "bytes_up": up_total if s or st and st.carry_up else None,
            "bytes_down": down_total if s or st and st.carry_down else None,
            "if_bytes_up": up, "if_bytes_down": down,
            "sha256_ok": bool(sha_ok.get(h.name)), "file_present": sha_ok.get(h.name) is not None,
            "up_bps": p.host(h.home or h.name).up.rate_bps, "down_bps": p.host(h.home or h.name).down.rate_bps,
            "home": h.home, "shares_interface_with": h.shares_netns,
            # what it uploaded after completing: on the wire, and by its client's count
            "if_bytes_up_after_completion": up - at[0] if at else None,
            "bytes_up_after_completion": (up_total - at[1]) if at and s else None,
            "seeding": {"policy": policy, "amount": amount,
                        # the sample on which the policy saw its condition (the stop follows at once)
                        "stopped_s": round(st.stop_decided_s, 3) if st and st.stop_decided_s is not None else None},
            "connectable": h.behaviour.connectable, "upload_limit_bps": h.behaviour.upload_limit,
            "access": access_summary(p.host(h.home or h.name)),
            "ip_bytes_up": seen.ip_usage.get(h.name, (None, None))[0] if seen else None,
            "ip_bytes_down": seen.ip_usage.get(h.name, (None, None))[1] if seen else None,
            "cap_reached_s": cap_reached(ex, h.name),
            "line_cut_s": round(st.left_s, 3) if st and st.left_reason == "cut" else None,
            "bill": peer_bill(ex, h, t_end),
            "tcp_max": seen.tcp_max.get(h.name, {}) if seen else {},     # most at once, over the samples
            "wire": wire.get(h.name),
            "flows": peer_flows(p, seen.flow_totals(h.name)) if seen else [],
            "error": seen.errors.get(h.name) if seen else None,
            "resources": sw.resources.get(h.name),
        })
    leechers = [x for x in peers if x["role"] == "leecher"]
    arrived = [x for x in leechers if x["arrived_s"] is not None]
    done_at = [x["completed_at_s"] for x in leechers if x["completed_at_s"] is not None]
    return {
        "format_version": FORMAT_VERSION, "run_id": p.run_id, "experiment": p.name, "repetition": p.repetition,
        "status": status, "error": error, "partial": status != "complete",
        "ended_by": ex.ended_by if ex else None, "end": p.end,
        "flash_crowd": p.t_min_s is not None,
        "t_min_s": round(p.t_min_s, 3) if p.t_min_s is not None else None,
        "t_min_terms": {k: round(v, 3) for k, v in p.t_min_terms.items()},
        "t_min_note": None if p.t_min_s is not None else
        "the Kumar-Ross bound is for peers with links of their own; here homes share theirs" if p.homes else
        "the Kumar-Ross bound is for a flash crowd (every peer arriving at t=0); this swarm's arrivals differ",
        "homes": len(p.homes),
        # the makespan: from the swarm's start to the last completion, when every arrived leecher completed
        "swarm_completion_s": round(max(done_at), 3) if done_at and len(done_at) == len(arrived) else None,
        "leechers_completed": sum(1 for x in leechers if x["completed"]), "leechers": len(leechers),
        "leechers_arrived": len(arrived),
        "content_bytes": p.content_bytes, "content_sha256": sw.content_sha,
        "shaper": sw.shaper.name, "delay_element": sw.element_stats or None,
        "captures": sw.capture_stats or None,
        # packets a host tried to send to an address outside the emulated network, dropped in
        # its own namespace (see wire.guard_rules), by host
        "outside_blocked": {n: w["outside_blocked"] for n, w in sorted(wire.items())
                            if w and w.get("outside_blocked") and not p.host(n).shares_netns},
        "testbed_cpu": cpu,
        "host": host_summary(ex.sampler.load.rows) if ex else None,
        "containers": container_totals(sw.resources),
        # containers that died without the run killing them: {host, exit_code, oom, time}
        "container_deaths": sw.watch.since(0) if sw.watch else [],
        "out_of_memory": sorted({o["host"] for o in sw.watch.ooms}) if sw.watch else [],
        "availability": ex.availability() if ex else None,
        "peers": peers,
    }


def container_totals(resources: dict[str, dict | None]) -> dict | None:
    """What all the run's containers used (tracker and routers too), from their cgroups."""
    known = [r for r in resources.values() if r]
    if not known:
        return None
    return {"containers": len(resources), "read": len(known), "cpu_s": round(sum(r["cpu_ns"] for r in known) / 1e9, 3),
            "rss_bytes": sum(r["rss_bytes"] for r in known),
            "rss_max_bytes": max(r["rss_bytes"] for r in known),
            "mem_peak_bytes": sum(r["mem_peak_bytes"] for r in known)}


def peer_flows(p: Plan, flows: dict) -> list[dict]:
    """Bytes exchanged with each remote peer, TCP and uTP, as the kernel's flow accounting
    counted them (a connection's counters are from its last sample before it closed; one
    opened and closed between two samples is not seen)."""
    names = {h.data_ip: h.name for h in p.hosts}
    per: dict[tuple[str, str], dict[str, int]] = {}
    for (proto, addr, _port), c in flows.items():
        key = (names.get(addr, addr), proto)
        acc = per.setdefault(key, {"bytes_out": 0, "bytes_in": 0})
        acc["bytes_out"] += c["bytes_out"]
        acc["bytes_in"] += c["bytes_in"]
    return [{"remote": r, "proto": proto, **c} for (r, proto), c in sorted(per.items())]


def cap_reached(ex: Executor | None, name: str) -> float | None:
    watch = ex.policies.caps.get(name) if ex else None
    return round(watch.reached_at, 3) if watch and watch.reached_at is not None else None


def access_summary(h) -> dict:
    def direction(s):
        return {"rate_bps": s.rate_bps, "delay_s": s.delay_s, "jitter_s": s.jitter_s, "loss": s.loss,
                "queue": s.queue_pkts, "trace": s.trace.source if s.trace else None}
    return {"profile": h.profile, "up": direction(h.up), "down": direction(h.down)}


def peer_bill(ex: Executor | None, h, t_end: float | None) -> dict | None:
    """The peer's bill under its data plan: minutes online run from its arrival to its
    departure (seeding stopped, line cut) or the end of the swarm."""
    if h.data_plan is None or ex is None or t_end is None:
        return None
    up, down = ex.sampler.seen.ip_usage.get(h.name, (0, 0))
    st = ex.peers[h.name]
    start = st.arrived_s or 0.0
    end = min(x for x in (st.left_s, t_end) if x is not None)
    return metering.bill(h.data_plan, up, down, max(0.0, end - start) / 60.0)


def delay_emulation(shaper: LinkShaper, tc: dict) -> str:
    if shaper.name == "netem":
        return "netem: the kernel's sch_netem adds delay, jitter and loss on each link's egress"
    why = "" if tc["netem"] else " (this kernel has no sch_netem)"
    return (f"userspace: an NFQUEUE element at each receiving host adds the path's delay, jitter and "
            f"loss{why}")


def manifest(p: Plan, imgs: dict[str, images.Image], seed: int, repetitions: int) -> dict:
    tc = facts.traffic_control()
    shaper = shaping.choose(p.shaper, tc["netem"])()
    return {
        "format_version": FORMAT_VERSION, "run_id": p.run_id, "experiment": p.name, "seed": seed,
        "repetition": p.repetition, "repetitions": repetitions,
        # each purpose's stream is derived from (seed, repetition, purpose): repetitions are independent
        "derived_seeds": p.seeds,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "testbed": facts.testbed_version(), "host": facts.host_facts(),
        "machines": sorted({h.machine for h in p.hosts}),
        "traffic_control": tc, "shaper": shaper.name, "delay_emulation": delay_emulation(shaper, tc),
        "images": {n: {"tag": i.tag, "packages": list(i.spec.packages)} for n, i in imgs.items()},
        "builds": p.builds,      # client builds tested instead of a release: their files' sha256
        "addresses": {"data": "198.18.0.0/17", "home_lans": "198.18.128.0/17", "control": f"{p.control_gateway}/{p.control_prefix}"},
        "hosts": [{"name": h.name, "role": h.role, "client": h.client, "site": h.site, "machine": h.machine,
                   "data_ip": h.data_ip, "container": h.container} for h in p.hosts],
    }


def image_packages(sw: Swarm) -> dict[str, dict[str, str]]:
    """Package versions each image was built from, read inside one container of each."""
    out: dict[str, dict[str, str]] = {}
    for h in sw.hosts.values():
        if h.plan.image in out:
            continue
        code, text = h.exec(["cat", images.PACKAGE_LIST])
        versions = dict(line.split("\t", 1) for line in text.splitlines() if "\t" in line) if code == 0 else {}
        wanted = set(sw.images[h.plan.image].spec.packages)
        out[h.plan.image] = {k: v for k, v in versions.items() if k.split(":")[0] in wanted}
    return out


def written_experiment(exp, p: Plan, shaper: str) -> tuple[str, dict[str, str]]:
    """experiment.yaml as the run carried it out: the piece size, each group's site and the
    shaper as chosen (not 'auto', not null), traces by name (under topologies/traces/, else
    the file's name) rather than a path on this machine; and each trace's SHA-256, for the
    manifest."""
    import hashlib

    import yaml

    from testbed.traces import TRACE_DIR
    data = exp.model_dump(mode="json", by_alias=True)
    data["content"]["piece_size"] = f"{p.piece_bytes}B" if p.piece_bytes % 1024 else f"{p.piece_bytes // 1024}KiB"
    data["shaper"] = shaper
    hashes: dict[str, str] = {}

    def name_traces(access: dict | None) -> None:
        for key in ("up_trace", "down_trace"):
            ref = (access or {}).get(key)
            if isinstance(ref, str):
                path = Path(ref)
                name = str(path.relative_to(TRACE_DIR)) if path.is_relative_to(TRACE_DIR) else path.name
                hashes[name] = hashlib.sha256(path.read_bytes()).hexdigest()
                access[key] = name
    for key in ("seeders", "peers"):
        for g in data[key]:
            build = g.get("build") or {}
            for kind in ("binary", "package"):
                if build.get(kind):      # by file name (its sha256 is beside it), not a path here
                    build[kind] = Path(build[kind]).name
            sites = {h.site for h in p.hosts if h.group == g["name"] and h.role in ("seeder", "leecher")}
            if g.get("site") is None and len(sites) == 1 and not g.get("household"):
                g["site"] = sites.pop()
            name_traces(g.get("access"))
    for h in data.get("households", []):
        name_traces(h.get("access"))
    data["tracker"]["site"] = data["tracker"].get("site") or p.host("tracker").site
    return yaml.safe_dump(data, sort_keys=False), hashes
