"""Layer 2 of validation: cross-references and values that the schema alone cannot judge.

The ranges are what the machinery below can carry out, so that nothing that validates fails
after containers start: HTB cannot shape below 8 kbit/s, the userspace delay element holds
packets for at most 10 s, clients take pieces of at most 16 MiB (libtorrent's and torf's
limit), and a run's control block is a /22.
"""
from __future__ import annotations

from testbed import catalog, units
from testbed.errors import InputError
from testbed.model.churn import Decaying, EndAfter, Exponential, FlashCrowd, Lognormal, Poisson, ProfileUse, Weibull
from testbed.model.homes import LAN_PREFIX, MAX_HOMES
from testbed.model.schema import AccessLink, Experiment, PeerGroup, Throttle, Topology


MIN_RATE, MAX_RATE = 8000.0, 10e9          # bit/s a link may be shaped to
MAX_DELAY = 10.0                           # seconds, one way (and jitter)
MAX_QUEUE = 100_000                        # packets
MAX_PIECE = 16 * 1024 * 1024
MAX_HOSTS = 2 ** (32 - 22) - 3             # a /22 control block, less its gateway and broadcast
MAX_CONNECTIONS = 65535


def check_rate(value: float | None, key: str, fail, what: str = "rate") -> None:
    if value is not None and not MIN_RATE <= value <= MAX_RATE:
        fail(key, f"must be a {what} from 8kbit to 10gbit (HTB shapes no slower than 8kbit), not "
             f"{units.fmt_rate(value)}")


def check_meaning(exp: Experiment, source: str) -> None:
    """Layer 2: cross-references and values that the schema alone cannot judge."""
    def fail(key: str, why: str) -> None:
        raise InputError(f"{source}: {key}: {why}")

    topo = exp.topology
    assert isinstance(topo, Topology)
    sites = set(topo.sites)
    if len(sites) != len(topo.sites):
        fail("topology.sites", "site names must be unique")
    for i, link in enumerate(topo.core):
        for end in link.ends:
            if end not in sites:
                fail(f"topology.core[{i}].ends", f"unknown site '{end}' (sites: {', '.join(topo.sites)})")
        if link.ends[0] == link.ends[1]:
            fail(f"topology.core[{i}].ends", "a core link must join two different sites")
        for key in ("rate", "reverse_rate"):
            check_rate(getattr(link, key), f"topology.core[{i}].{key}", fail)
        for key in ("delay", "jitter"):
            if not 0 <= getattr(link, key) <= MAX_DELAY:
                fail(f"topology.core[{i}].{key}", "must be from 0s to 10s")
        if not 1 <= link.queue <= MAX_QUEUE:
            fail(f"topology.core[{i}].queue", f"must be from 1 to {MAX_QUEUE} packets")
        if not 0 <= link.loss < 1:
            fail(f"topology.core[{i}].loss", "must be at least 0% and below 100%")
    for i, seg in enumerate(topo.segments):
        if not any({c.ends[0], c.ends[1]} == {seg.site, seg.core} for c in topo.core):
            fail(f"topology.segments[{i}]", f"no core link joins segment '{seg.site}' to '{seg.core}'")
    if exp.tracker.site is not None and exp.tracker.site not in sites:
        fail("tracker.site", f"unknown site '{exp.tracker.site}' (sites: {', '.join(topo.sites)})")
    if not 1 <= exp.tracker.port <= 65535:
        fail("tracker.port", "must be a port from 1 to 65535")
    if exp.content.size <= 0:
        fail("content.size", "must be a positive size")
    if exp.content.piece_size is not None:
        ps = exp.content.piece_size
        if ps < 16 * 1024 or ps > MAX_PIECE or ps & (ps - 1):
            fail("content.piece_size", "must be a power of two from 16KiB to 16MiB")
    if exp.timeout <= 0:
        fail("timeout", "must be a positive duration")
    if exp.repetitions < 1:
        fail("repetitions", "must be at least 1")
    names: set[str] = set()
    for key, groups in (("seeders", exp.seeders), ("peers", exp.peers)):
        for i, g in enumerate(groups):
            where = f"{key}[{i}]"
            if g.name in names or g.name == "tracker":
                fail(f"{where}.name", f"group name '{g.name}' is used twice (or is reserved)")
            names.add(g.name)
            if not 1 <= g.count <= MAX_HOSTS:
                fail(f"{where}.count", f"must be from 1 to {MAX_HOSTS} (the hosts a run's address plan holds)")
            if g.client not in catalog.CLIENTS:
                fail(f"{where}.client", f"unknown client '{g.client}' (known: {', '.join(sorted(catalog.CLIENTS))})")
            for knob in ("upload_limit", "download_limit"):
                value = getattr(g.behaviour, knob)
                if value is not None and not 8 * 1024 <= value <= MAX_RATE:
                    fail(f"{where}.behaviour.{knob}", "must be from 8kbit to 10gbit (clients cap in whole KiB/s)")
            b = g.behaviour
            for knob in ("max_connections", "upload_slots"):
                value = getattr(b, knob)
                if value is not None and not 1 <= value <= MAX_CONNECTIONS:
                    fail(f"{where}.behaviour.{knob}", f"must be from 1 to {MAX_CONNECTIONS}")
            policy, amount = b.seeding_policy()
            if policy == "duration" and amount <= 0:
                fail(f"{where}.behaviour.seeding.duration", "must be a positive duration")
            if policy == "ratio" and amount <= 0:
                fail(f"{where}.behaviour.seeding.ratio", "must be a positive number")
            if key == "seeders" and policy == "stop":
                fail(f"{where}.behaviour.seeding", "a seeder that stops on completion would never upload; "
                     "use forever, {duration: ...} or {ratio: ...}")
            for knob, value in b.model_dump(mode="json").items():
                if value is None:
                    continue
                why = catalog.refusal(g.client, knob, value)
                if why:
                    fail(f"{where}.behaviour.{knob}", why)
            if g.household is None:
                if g.access is None:
                    fail(f"{where}.access", "missing: a group needs an access link unless it lives in a household")
                check_access(g.access, f"{where}.access", fail)
                if g.access.plan is not None and g.access.plan.period < exp.timeout:
                    fail(f"{where}.access.plan.period", "is shorter than the run's timeout; a run is billed within "
                         "one billing period")
            port = b.listen_port
            if isinstance(port, int) and not 1024 <= port <= 65535:
                fail(f"{where}.behaviour.listen_port", "must be a port from 1024 to 65535, or default")
            if g.site is not None and g.site not in sites:
                fail(f"{where}.site", f"unknown site '{g.site}' (sites: {', '.join(topo.sites)})")
            if g.limits.memory is not None and not 32 * 1024 * 1024 <= g.limits.memory <= 2 ** 40:
                fail(f"{where}.limits.memory", "must be from 32MiB (a client's smallest working set) to 1TiB")
            if g.limits.cpus is not None and not 0.01 <= g.limits.cpus <= 1024:
                fail(f"{where}.limits.cpus", "must be from 0.01 to 1024 cores")
            check_arrivals(g, key, where, fail)
            for j, use in enumerate(g.participation or ()):
                check_participation(use, g, f"{where}.participation[{j}]", fail)
            check_shares(g.participation or [], f"{where}.participation", fail)
    hosts = 1 + sum(g.count for _, g in exp.groups()) + sum(h.count for h in exp.households) + bool(exp.households)
    if hosts > MAX_HOSTS:
        counts = [(g.count, f"{key}[{i}].count") for key in ("seeders", "peers") for i, g in enumerate(getattr(exp, key))]
        counts += [(h.count, f"households[{i}].count") for i, h in enumerate(exp.households)]
        fail(max(counts)[1], f"the run would have {hosts} hosts (tracker, peers, homes), more than the {MAX_HOSTS} "
             "its address plan holds")
    check_faults(exp, fail)
    check_homes(exp, sites, fail)
    if isinstance(exp.end, EndAfter):
        if exp.end.duration <= 0:
            fail("end.duration", "must be a positive duration")
        if exp.end.duration > exp.timeout:
            fail("end.duration", f"is longer than the run's timeout ({units.exact_duration(exp.timeout)})")


def check_access(a: AccessLink, where: str, fail) -> None:
    for d in ("up", "down"):
        rate = getattr(a, d)
        if rate is None and getattr(a, f"{d}_trace") is None:
            fail(f"{where}.{d}", "missing: give a rate, a profile, or a trace")
        check_rate(rate, f"{where}.{d}", fail)
    if not 1 <= a.queue <= MAX_QUEUE:
        fail(f"{where}.queue", f"must be from 1 to {MAX_QUEUE} packets")
    for key in ("delay", "jitter"):
        if not 0 <= min(getattr(a, key)) <= max(getattr(a, key)) <= MAX_DELAY:
            fail(f"{where}.{key}", "must be from 0s to 10s")
    if not isinstance(a.trace_offset, str) and a.trace_offset < 0:
        fail(f"{where}.trace_offset", "must not be negative")
    if not all(0 <= x < 1 for x in a.loss):
        fail(f"{where}.loss", "must be at least 0% and below 100%")
    p = a.plan
    if p is None:
        return
    if p.cap is not None and p.cap <= 0:
        fail(f"{where}.plan.cap", "must be a positive size")
    if p.period <= 0:
        fail(f"{where}.plan.period", "must be a positive duration")
    if p.used < 0:
        fail(f"{where}.plan.used", "must not be negative")
    if p.at_cap != "overage" and p.cap is None:
        fail(f"{where}.plan.at_cap", "needs a cap")
    if isinstance(p.at_cap, Throttle) and p.at_cap.throttle < 8000:
        fail(f"{where}.plan.at_cap.throttle", "must be at least 8kbit")
    for key in ("fee", "per_gb", "per_minute", "overage_per_gb"):
        if getattr(p, key) < 0:
            fail(f"{where}.plan.{key}", "must not be negative")




def check_arrivals(g: PeerGroup, key: str, where: str, fail) -> None:
    a = g.arrivals
    if key == "seeders" and not (isinstance(a, FlashCrowd) and a.at == 0):
        fail(f"{where}.arrivals", "origin seeders are in place when the swarm starts; make a late seeder a "
             "peer group, or fail the origin with a fault")
    for field in ("at", "after", "tau"):
        if getattr(a, field, 0) < 0 or (field == "tau" and getattr(a, field, 1) == 0):
            fail(f"{where}.arrivals.{field}", "must be a positive duration" if field == "tau" else
                 "must not be negative")
    if isinstance(a, (Poisson, Decaying)) and a.rate <= 0:
        fail(f"{where}.arrivals.rate", "must be a positive rate of arrivals, such as 2/min")


def check_distribution(d, where: str, fail) -> None:
    if d is None:
        return
    for field in ("value", "mean", "scale", "median"):
        if getattr(d, field, 1) < 0 or (field != "value" and getattr(d, field, 1) == 0):
            fail(f"{where}.{field}", "must be a positive duration")
    if isinstance(d, Weibull) and d.shape <= 0:
        fail(f"{where}.shape", "must be a positive number")
    if isinstance(d, Lognormal) and d.sigma < 0:
        fail(f"{where}.sigma", "must not be negative")
    if isinstance(d, Exponential) and d.mean <= 0:
        fail(f"{where}.mean", "must be a positive duration")


def check_participation(use: ProfileUse, g: PeerGroup, where: str, fail) -> None:
    for field in ("seed_time", "session", "abort_after", "online", "offline", "crash_after", "rejoin_after"):
        check_distribution(getattr(use, field), f"{where}.{field}", fail)
    stops = [k for k in ("seeding", "seed_time", "ratio") if getattr(use, k) is not None]
    if len(stops) > 1:
        fail(f"{where}", f"says both {stops[0]} and {stops[1]}: seeding ends one way (set the other to null)")
    if use.ratio is not None and use.ratio <= 0:
        fail(f"{where}.ratio", "must be a positive number")
    if use.abort_at is not None and not 0 < use.abort_at < 1:
        fail(f"{where}.abort_at", "must be above 0% and below 100%")
    if use.upload_share is not None and not 0 < use.upload_share <= 1:
        fail(f"{where}.upload_share", "must be above 0% and at most 100%")
    if use.upload_limit is not None and use.upload_limit < 8 * 1024:
        fail(f"{where}.upload_limit", "must be at least 8kbit (clients cap in whole KiB/s)")
    if (use.online is None) != (use.offline is None):
        fail(f"{where}", "an intermittent peer needs both 'online' and 'offline'")
    if use.rejoin_after is not None and use.crash_after is None:
        fail(f"{where}.rejoin_after", "needs crash_after")
    for knob, value in (("upload_limit", use.upload_limit or use.upload_share), ("connectable", use.connectable)):
        if value is not None and (why := catalog.refusal(g.client, knob, value)):
            fail(f"{where}.{knob}", why)


def check_shares(uses: list[ProfileUse], where: str, fail) -> None:
    if len(uses) <= 1:
        if uses and uses[0].share not in (None, 1.0):
            fail(f"{where}[0].share", "a single profile is the whole group; give a share only in a mix")
        return
    if any(u.share is None for u in uses):
        fail(where, "a mix of profiles needs a share for each (e.g. share: 30%)")
    if any(not 0 < u.share <= 1 for u in uses):
        fail(where, "each share must be above 0% and at most 100%")
    if abs(sum(u.share for u in uses) - 1) > 1e-6:
        fail(where, f"the shares add up to {sum(u.share for u in uses) * 100:g}%, not 100%")


def check_faults(exp: Experiment, fail) -> None:
    hosts = {n: role for role, g in exp.groups() for n in exp.host_names()[g.name]}
    for i, f in enumerate(exp.faults):
        where = f"faults[{i}]"
        if f.at < 0 or f.at > exp.timeout:
            fail(f"{where}.at", "must lie between 0s and the run's timeout")
        if f.kind == "tracker_down":
            if f.host not in (None, "tracker"):
                fail(f"{where}.host", "tracker_down is a fault of the tracker; leave host out")
        elif f.host is None:
            fail(f"{where}.host", f"{f.kind} needs the host it happens to")
        elif f.host not in hosts:
            close = sorted(hosts)[:6]
            fail(f"{where}.host", f"unknown host '{f.host}' (hosts are named after their group, numbered when "
                 f"it has several members: {', '.join(close)}{', ...' if len(hosts) > 6 else ''})")
        if f.kind == "pause" and not f.for_:
            fail(f"{where}.for", "a pause needs its length (for: 10s)")
        if f.for_ is not None and f.for_ <= 0:
            fail(f"{where}.for", "must be a positive duration")


def check_homes(exp: Experiment, sites: set[str], fail) -> None:
    """Households, the groups living in them, and the carriers' policies."""
    topo = exp.topology
    homes: dict[str, str] = {}
    groups = {g.name for _, g in exp.groups()}
    for i, h in enumerate(exp.households):
        where = f"households[{i}]"
        if h.name in homes or h.name in groups or h.name in ("tracker", "internet"):
            fail(f"{where}.name", f"'{h.name}' is already the name of a household, a group or a reserved host")
        homes[h.name] = where
        if h.count < 1:
            fail(f"{where}.count", "must be at least 1")
        check_access(h.access, f"{where}.access", fail)
        if h.access.plan is not None and h.access.plan.period < exp.timeout:
            fail(f"{where}.access.plan.period", "is shorter than the run's timeout; a run is billed within "
                 "one billing period")
        if h.site is not None and h.site not in sites:
            fail(f"{where}.site", f"unknown site '{h.site}' (sites: {', '.join(topo.sites)})")
        if h.probe is not None and h.probe < 0.2:
            fail(f"{where}.probe", "must be at least 200ms (the shortest interval ping allows without privileges)")
        bg = h.background
        if bg is not None:
            if bg.up is None and bg.down is None:
                fail(f"{where}.background", "give an 'up' rate, a 'down' rate, or both")
            for key in ("up", "down"):
                if getattr(bg, key) is not None and getattr(bg, key) < 8000:
                    fail(f"{where}.background.{key}", "must be at least 8kbit")
            if (bg.on is None) != (bg.off is None):
                fail(f"{where}.background", "give both 'on' and 'off' for an on/off load, or neither for a steady one")
            for key in ("on", "off"):
                if getattr(bg, key) is not None and getattr(bg, key) < 1:
                    fail(f"{where}.background.{key}", "must be at least 1s")
    names = exp.host_names()
    # every host the plan will make has a name of its own: tracker, internet server, routers, peers
    seen_names: dict[str, str] = {"tracker": "the tracker"}
    if exp.households:
        seen_names["internet"] = "the internet server"
    for key, gs in (("seeders", exp.seeders), ("peers", exp.peers)):
        for i, g in enumerate(gs):
            for n in names[g.name]:
                if n in seen_names:
                    fail(f"{key}[{i}].name", f"its host '{n}' has the name of {seen_names[n]}; rename the group")
                seen_names[n] = f"a member of group '{g.name}'"
    for home, routers in exp.home_names().items():
        for r in routers:
            if r in seen_names:
                fail(f"{homes[home]}.name", f"its home '{r}' has the name of {seen_names[r]}; rename the household")
            seen_names[r] = f"a home of household '{home}'"
    if sum(h.count for h in exp.households) > MAX_HOMES:
        fail("households", f"{sum(h.count for h in exp.households)} homes are more than the {MAX_HOMES} LANs "
             "of the address plan")
    per_home: dict[tuple[str, int], int] = {}
    for _, g in exp.groups():
        if g.household in homes:
            count = exp.household(g.household).count
            for m in range(g.count):
                per_home[(g.household, m % count)] = per_home.get((g.household, m % count), 0) + 1
    for (hname, _), n in per_home.items():
        if n > 2 ** (32 - LAN_PREFIX) - 3:
            fail(f"{homes[hname]}.count", f"a home would hold {n} clients, more than its LAN /{LAN_PREFIX} "
                 "holds; give the household more homes")
    forwarded: dict[tuple, str] = {}
    pc_connectable: dict[str, tuple[bool, str]] = {}
    for key, gs in (("seeders", exp.seeders), ("peers", exp.peers)):
        for i, g in enumerate(gs):
            where = f"{key}[{i}]"
            if g.household is None:
                if g.forward:
                    fail(f"{where}.forward", "only a group in a household has a router to forward its port")
                continue
            if g.household not in homes:
                known = ", ".join(homes) or "none defined"
                fail(f"{where}.household", f"unknown household '{g.household}' (households: {known})")
            if g.access is not None:
                fail(f"{where}.access", f"a group in household '{g.household}' uses the home's access link; "
                     "set the link on the household")
            if g.site is not None:
                fail(f"{where}.site", "a group in a household is where its household is; set the household's site")
            if g.forward and not g.behaviour.connectable:
                fail(f"{where}.forward", "a forwarded client must be connectable (behaviour.connectable)")
            h = exp.household(g.household)
            if h.one_pc:
                # one namespace, one packet filter: the PC accepts connections or it does not
                pc_connectable.setdefault(g.household, (g.behaviour.connectable, where))
                if pc_connectable[g.household][0] != g.behaviour.connectable:
                    fail(f"{where}.behaviour.connectable", f"differs from {pc_connectable[g.household][1]}'s, "
                         f"on the same PC (one_pc household '{g.household}')")
            if g.forward and not h.one_pc:
                # one forward per (home, port): two LAN hosts cannot both take one outside port
                port = g.behaviour.listen_port
                pkey = catalog.PEER_PORT if port is None else (f"default:{g.client}" if port == "default" else port)
                shown = catalog.PEER_PORT if port is None else port
                if g.count > h.count:
                    fail(f"{where}.forward", f"two members would share a home and both need port {shown} "
                         "forwarded; give the household more homes")
                for m in range(g.count):
                    slot = (g.household, m % h.count, pkey)
                    if slot in forwarded:
                        fail(f"{where}.forward", f"{forwarded[slot]} already forwards port {shown} of the same "
                             "home; give one of them another behaviour.listen_port")
                    forwarded[slot] = where
    home_sites = {h.site for h in exp.households}
    congested, policed = set(), {}
    for i, p in enumerate(exp.policies):
        where = f"policies[{i}]"
        if (p.segment is None) == (p.household is None):
            fail(where, "name exactly one of 'segment' or 'household'")
        if p.congestion is None and p.protocol is None:
            fail(where, "give a 'congestion' or a 'protocol' policy")
        if p.segment is not None:
            seg = topo.segment(p.segment)
            if seg is None:
                known = ", ".join(s.site for s in topo.segments) or "none: use a topology with generator: isp"
                fail(f"{where}.segment", f"'{p.segment}' is not an ISP segment (segments: {known})")
            if p.congestion is not None:
                if p.segment in congested:
                    fail(f"{where}.segment", f"segment '{p.segment}' already has a congestion policy")
                congested.add(p.segment)
                horizon = exp.end.duration if isinstance(exp.end, EndAfter) else exp.timeout
                if p.congestion.window >= horizon:
                    fail(f"{where}.congestion.window", f"is not shorter than the run ({units.exact_duration(horizon)}): "
                         "nobody could ever be marked; scale the window down (RFC 6057 uses 15 minutes)")
            if p.protocol is not None and p.segment not in home_sites:
                fail(f"{where}.protocol", f"segment '{p.segment}' has no household: the policy is carried out "
                     "at each home router of the segment")
        if p.household is not None:
            if p.household not in homes:
                fail(f"{where}.household", f"unknown household '{p.household}'")
            if p.congestion is not None:
                fail(f"{where}.congestion", "congestion management acts on a segment's aggregation link")
        c = p.congestion
        if c is not None:
            for key in ("port_threshold", "down_port_threshold", "user_threshold", "release_threshold"):
                if not 0 < getattr(c, key) <= 1:
                    fail(f"{where}.congestion.{key}", "must be above 0% and at most 100%")
            if c.release_threshold > c.user_threshold:
                fail(f"{where}.congestion.release_threshold", "must not be above user_threshold")
            if c.window < c.check_every or c.check_every < 0.2:
                fail(f"{where}.congestion.window", "must be at least check_every, which must be at least 200ms")
        pp = p.protocol
        if pp is not None:
            # one protocol policy per router: a segment's covers every home on it
            covered = ({h.name for h in exp.households if h.site == p.segment} if p.segment is not None
                       else {p.household})
            for h in covered:
                if h in policed:
                    fail(f"{where}.protocol", f"household '{h}' is already under {policed[h]}'s protocol policy")
                policed[h] = where
            if pp.action == "throttle" and (pp.rate is None or pp.rate < 8000):
                fail(f"{where}.protocol.rate", "a throttle needs a rate of at least 8kbit")
            if pp.action != "throttle" and pp.rate is not None:
                fail(f"{where}.protocol.rate", f"only a throttle has a rate, not {pp.action}")
