"""The metrics a report computes: each one's name, unit and meaning, as data (the model
checks a study's claims against it without loading the analysis)."""
from __future__ import annotations

RESOLUTION_S = 1.0

# name -> (unit, meaning); group metrics are listed by their stem
METRICS: dict[str, tuple[str, str]] = {
    "completion_median_s": ("s", "median download time of the leechers that completed, from each one's arrival"),
    "completion_p95_s": ("s", "95th percentile of those download times"),
    "completion_mean_s": ("s", "mean download time of the leechers that completed, from each one's arrival"),
    "completed_fraction": ("ratio", "leechers that completed (SHA-256 checked) / leechers that arrived"),
    "swarm_completion_s": ("s", "from the swarm's start to the last completion, when every arrived leecher completed"),
    "full_copy_lost": ("ratio", "1 if the peers online ever held no full copy after holding one, else 0"),
    "last_full_copy_lost_s": ("s", "when the swarm lost its last full copy (runs where it did)"),
    "origin_offload": ("ratio", "share of the bytes the leechers received that the origin seeders did not send"),
    "kumar_ross_efficiency": ("ratio", "Kumar-Ross minimum / swarm completion time (flash crowds on own links)"),
    "bytes_up": ("bytes", "payload uploaded by a group's peers (their clients' counts)"),
    "bytes_down": ("bytes", "payload downloaded by a group's peers (their clients' counts)"),
    "share_ratio": ("ratio", "mean over a group's peers of bytes uploaded / bytes downloaded"),
    "bill": ("money", "sum of a group's peers' bills under their data plans"),
    "home_utilisation_up": ("ratio", "a home's access link, upstream bytes / capacity x time (no [home]: the mean "
                                     "over homes)"),
    "segment_utilisation_up": ("ratio", "an ISP segment's aggregation link, upstream bytes / capacity x time"),
    "segment_p2p_share_up": ("ratio", "share of a segment's upstream IP bytes that were P2P"),
    "rtt_p95_ms": ("ms", "95th percentile of a home router's pings to the internet server (RTT under load)"),
    "upload_utilisation": ("ratio", "mean over a group's leechers (own lines) of what they uploaded while downloading "
                                    "/ (upload rate x download time): bytes on the wire against the line's rate, or "
                                    "payload against the client's cap where that is lower"),
    "in_class_share": ("ratio", "mean over a group's leechers of the IP bytes sent to leechers of the same group / "
                                "to all leechers (per-remote conntrack counts)"),
    "first_piece_median_s": ("s", "median over leechers of the time from arrival to the first sample holding data"),
    "last_5pct_median_s": ("s", "median over leechers that completed of the time from 95 % to 100 % (end game)"),
    "leechers_online_end": ("count", "leechers online (not yet complete) at the last sample"),
    "leecher_growth_per_min": ("count/min", "least-squares slope of leechers online over the run's second half"),
    "one_piece_short_share": ("ratio", "of the leechers online at the last sample, the share missing one piece "
                                       "or less (the missing-piece syndrome's 'one club')"),
    "testbed_cpu_share": ("ratio", "the testbed process's own CPU time / wall time (one core = 1)"),
    "host_cpu_busy_mean": ("ratio", "the machine's CPUs busy over the swarm, share of all cores (host.csv)"),
    "host_saturated_share": ("ratio", "share of the swarm's time with the machine's CPUs at least 90 % busy"),
}
# The metrics a study's first table shows, in this order (others go to metrics.json and the
# full table).
HEADLINE = ["completion_median_s", "completion_p95_s", "completed_fraction", "origin_offload",
            "full_copy_lost", "kumar_ross_efficiency"]


# metrics that take a peer group, `name[group]` (and those that have no group form: a
# `[...]` on them is refused); the rest name a home or segment in brackets, or nothing
GROUP_METRICS = {"completion_median_s", "completion_mean_s", "completed_fraction", "bytes_up", "bytes_down",
                 "share_ratio", "in_class_share", "upload_utilisation"}
PLAIN_METRICS = {"completion_p95_s", "swarm_completion_s", "full_copy_lost", "last_full_copy_lost_s",
                 "origin_offload", "kumar_ross_efficiency", "first_piece_median_s", "last_5pct_median_s",
                 "leechers_online_end", "leecher_growth_per_min", "one_piece_short_share", "testbed_cpu_share",
                 "host_cpu_busy_mean", "host_saturated_share"}


def stem(name: str) -> str:
    return name.split("[", 1)[0]


def unit(name: str) -> str:
    return METRICS.get(stem(name), ("", ""))[0]
