"""households.json: what each home's link carried, what its clients got, what it paid, its
round-trip times under load, and what the carriers' policies did (all measured)."""
from __future__ import annotations

import csv

import numpy as np

from testbed import metering


def _rtt(rows: list[dict]) -> dict | None:
    if not rows:
        return None
    rtt = np.array([float(r["rtt_ms"]) for r in rows])
    return {"answered": len(rtt), "median_ms": round(float(np.median(rtt)), 3),
            "p95_ms": round(float(np.percentile(rtt, 95)), 3), "min_ms": round(float(rtt.min()), 3),
            "max_ms": round(float(rtt.max()), 3)}


def home_summary(sw, ex, carriers: dict, t_end: float | None) -> dict:
    p = sw.plan
    sw.rd.flush()       # the probes written at teardown, after the last tick's flush, on disk too
    try:
        with (sw.rd.path / "probes.csv").open() as f:
            probes = list(csv.DictReader(f))
    except OSError:
        probes = []
    usage = ex.sampler.home_usage if ex else {}
    seen = ex.sampler.seen if ex else None
    ports = carriers.get("ports", {})
    forwarded = carriers.get("forwarded", {})
    homes = []
    for home in p.homes:
        router = p.host(home.name)
        up, down = usage.get(home.name, (0, 0))
        minutes = (t_end or 0.0) / 60.0
        clients = []
        for m in home.members:
            hp = p.host(m)
            s = seen.last.get(m) if seen else None
            st = ex.peers.get(m) if ex else None
            carry = (st.carry_up, st.carry_down) if st else (0, 0)      # sessions before a restart
            clients.append({"name": m, "client": hp.client, "role": hp.role, "lan_ip": hp.data_ip,
                            "upload_limit_bps": hp.behaviour.upload_limit,
                            "listen_port_asked": hp.behaviour.listen_port, **ports.get(m, {}),
                            "forwarded": forwarded.get(m, []),
                            "shares_namespace_with": hp.shares_netns,
                            # each client's own count: in one PC, the interface is shared
                            "client_bytes_up": s.bytes_up + carry[0] if s else None,
                            "client_bytes_down": s.bytes_down + carry[1] if s else None})
        seconds = max(t_end or 0.0, 1e-9)
        kinds = carriers.get("traffic", {}).get(home.name, {})
        split = {f"{k}_{d}": kinds.get(f"{k}_{d}", 0) for k in ("other", "tracker") for d in ("up", "down")}
        split["p2p_up"] = max(0, up - split["other_up"] - split["tracker_up"])
        split["p2p_down"] = max(0, down - split["other_down"] - split["tracker_down"])
        homes.append({
            "name": home.name, "household": home.kind, "site": home.site, "wan_ip": router.data_ip,
            "lan": home.lan_net, "one_pc": home.one_pc,
            "up_bps": router.up.rate_bps, "down_bps": router.down.rate_bps,
            "ip_bytes_up": up, "ip_bytes_down": down,
            "utilisation_up": round(up * 8 / seconds / router.up.rate_bps, 4),
            "utilisation_down": round(down * 8 / seconds / router.down.rate_bps, 4),
            "bill": metering.bill(router.data_plan, up, down, minutes) if router.data_plan else None,
            "rtt": _rtt([r for r in probes if r["home"] == home.name]),
            # IP bytes: with the internet server (other traffic, probes), the tracker, and the rest: P2P
            "traffic": split,
            "background": home.background.model_dump(mode="json") if home.background else None,
            "clients": clients,
            "protocol_policy": carriers.get("protocol_policies", {}).get(home.name),
        })
    segments = {}
    for h in homes:
        if h["site"] in p.segment_sites:
            acc = segments.setdefault(h["site"], {"segment": h["site"], "p2p_up": 0, "other_up": 0, "p2p_down": 0,
                                                  "other_down": 0})
            for k in ("p2p_up", "other_up", "p2p_down", "other_down"):
                acc[k] += h["traffic"][k]
    for acc in segments.values():
        for d in ("up", "down"):
            total = acc[f"p2p_{d}"] + acc[f"other_{d}"]
            acc[f"p2p_share_{d}"] = round(acc[f"p2p_{d}"] / total, 4) if total else None
    return {"homes": homes, "segments": list(segments.values()),
            "segment_policies": carriers.get("segment_policies", []),
            "note": "bytes are IP bytes at each home's access link (what its carrier counts); "
                    "clients of one PC share one interface, so their own counts are the per-client figures"}
