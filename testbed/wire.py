"""What each peer does on the wire, observed in its own network namespace.

Three jobs. The first two are done with iptables in the container's namespace (run from
the machine with `nsenter --net`, because the client images carry no iptables):

- connectable: false. New inbound flows on the data interface are dropped, as a home
  NAT or firewall does; replies to the peer's own outgoing connections (TCP and uTP)
  pass, because conntrack sees them as ESTABLISHED. The drop counter says how many
  connection attempts the peer refused.
- wire counters. Every packet carrying the plaintext BitTorrent handshake
  ("\\x13BitTorrent protocol") is counted, in and out. An encrypted (MSE/PE) connection
  never carries it, so these counters show from the wire whether a client kept to its
  encryption setting. uTP packets are counted too (the string match does not care).

- TCP connections by direction, from `ss` in the namespace: established connections this
  peer accepted (inbound) and ones it dialed (outbound), and how many of them carried at
  least one 16 KiB block up or down in the last sample interval (upload slots in use,
  peers it downloads from), and the bytes waiting in their send queues. uTP connections
  are UDP and not in it.

iptables-legacy, not nft: on kernels built without nft's queue statement (the development
machine's) `iptables-legacy ... -j NFQUEUE` still works inside a namespace, and iptables is
the interface every distribution ships.
"""
from __future__ import annotations

import os
import shutil
import subprocess

from testbed.errors import RunError

IPTABLES = "iptables-legacy" if shutil.which("iptables-legacy") else "iptables"
IP6TABLES = "ip6tables-legacy" if shutil.which("ip6tables-legacy") else "ip6tables"
RESTORE = "iptables-legacy-restore" if shutil.which("iptables-legacy-restore") else "iptables-restore"
RESTORE6 = "ip6tables-legacy-restore" if shutil.which("ip6tables-legacy-restore") else "ip6tables-restore"
SAVE = "iptables-legacy-save" if shutil.which("iptables-legacy-save") else "iptables-save"
# A rule that uses conntrack and does nothing else (see enable_accounting).
HOOK_RULE = ["OUTPUT", "-m", "conntrack", "--ctstate", "INVALID", "-m", "comment", "--comment", "tb_flows"]
HANDSHAKE_HEX = "|13|BitTorrent protocol"
# The handshake opens a connection's first payload: it lies within a flow's first few hundred
# bytes, and within the first 160 bytes of its packet (IPv4 header, at most 60, + TCP header,
# at most 60; or UDP's 8 and uTP's 20-byte header with its extensions). So the string is
# looked for only in packets of flows that have carried at most 4 KiB both ways (connbytes,
# from conntrack's per-flow accounting, which every client's namespace has on) and only in
# their first 160 bytes. Searching every packet cost about 2 % of both cores in a 16x
# libtorrent swarm (Boyer-Moore setup per 1500-byte segment, both ways, for every client;
# measured with benchmarks/ratescale.py --perf). Not counted: a second uTP connection
# between the same two ports after the first carried 4 KiB (one conntrack entry for both).
HANDSHAKE_WINDOW = 160
HANDSHAKE_FLOW_BYTES = 4096
COUNTERS = ("inbound_refused", "plain_handshakes_in", "plain_handshakes_out", "outside_blocked")
EMULATED = "198.18.0.0/15"      # every address the testbed gives out: data, home LANs, control


def guard_rules() -> list[list[str]]:
    """What keeps a host's packets inside: whatever it would send to an address outside the
    emulated network (a client's UPnP discovery, the IGMP report of the multicast group it
    joined for it, a DNS query, a DHT bootstrap) is dropped in its own namespace and counted
    (`outside_blocked`). No host has a route out, so this counts what a client tried on an
    interface it named itself (multicast does), and guards against a route added later."""
    return [["-N", "TB_GUARD"], ["-A", "OUTPUT", "-j", "TB_GUARD"], ["-A", "TB_GUARD", "-o", "lo", "-j", "RETURN"],
            ["-A", "TB_GUARD", "-d", EMULATED, "-j", "RETURN"],
            ["-A", "TB_GUARD", "-m", "comment", "--comment", "outside_blocked", "-j", "DROP"]]


def rules(data_if: str, connectable: bool) -> list[list[str]]:
    """iptables argument lists for one client's host (pure, so the unit tests can read them)."""
    out = [*guard_rules(), ["-N", "TB_IN"], ["-N", "TB_OUT"],
           ["-A", "INPUT", "-i", data_if, "-j", "TB_IN"], ["-A", "OUTPUT", "-o", data_if, "-j", "TB_OUT"]]
    if not connectable:
        out.append(["-A", "TB_IN", "-m", "conntrack", "--ctstate", "NEW",
                    "-m", "comment", "--comment", "inbound_refused", "-j", "DROP"])
    for chain, name in (("TB_IN", "plain_handshakes_in"), ("TB_OUT", "plain_handshakes_out")):
        out.append(["-A", chain, "-m", "connbytes", "--connbytes", f"0:{HANDSHAKE_FLOW_BYTES}",
                    "--connbytes-dir", "both", "--connbytes-mode", "bytes",
                    "-m", "string", "--algo", "bm", "--to", str(HANDSHAKE_WINDOW),
                    "--hex-string", HANDSHAKE_HEX, "-m", "comment", "--comment", name])
    return out


def restore_script(rule_list: list[list[str]]) -> str:
    """The rules as one iptables-restore input for the filter table: loaded by one process per
    host instead of one per rule (bring-up time), and all or nothing."""
    def word(w: str) -> str:
        return f'"{w}"' if " " in w else w
    chains = [r[1] for r in rule_list if r[0] == "-N"]
    return "\n".join(["*filter", *(f":{c} - [0:0]" for c in chains),
                      *(" ".join(map(word, r)) for r in rule_list if r[0] != "-N"), "COMMIT", ""])


def load(ns_path: str, host: str, rule_list: list[list[str]], restore: str = RESTORE) -> None:
    """The rules into the filter table of the namespace at `ns_path`, by one process."""
    r = subprocess.run(["nsenter", f"--net={ns_path}", restore, "-w", "--noflush"],
                       input=restore_script(rule_list), capture_output=True, text=True)
    if r.returncode != 0:
        raise RunError(f"{host}: its packet filter rules did not load ({restore}: {r.stderr.strip()[:200]}; "
                       f"see testbed doctor)")


def install(pid: int, host: str, data_if: str | None, connectable: bool = True, accounting: bool = False) -> None:
    """A client's rules (guard, counters, refusals); with data_if None, the guard alone (tracker,
    routers, servers). `accounting`: conntrack's per-flow accounting too (`enable_accounting`),
    its hook in the same load, and then accounting switched on (the rules load conntrack, whose
    sysctls exist only then; the host has no interface yet, so no flow began before).
    IPv4's only: a container has IPv6 off from its creation (runtime.py), so it has no IPv6
    flow to count. Here that is one process where there were six (a `sysctl`, and an
    `iptables -C` and `-A` for each address family; each `nsenter` + iptables about 5 ms of
    CPU, while 50 hosts come up at once on two cores)."""
    ns_path = f"/proc/{pid}/ns/net"
    rule_list = guard_rules() if data_if is None else rules(data_if, connectable)
    if accounting:
        rule_list = [*rule_list, ["-A", *HOOK_RULE]]
    load(ns_path, host, rule_list)
    if accounting:
        switch_on_accounting(ns_path)


def parse_counters(listing: str) -> dict[str, int]:
    """Packet counts by rule comment, from `iptables -L -v -x -n` output."""
    found = {}
    for line in listing.splitlines():
        fields = line.split()
        if "/*" in fields and fields[0].isdigit():
            found[fields[fields.index("/*") + 1]] = int(fields[0])
    return found


def read(pid: int) -> dict[str, int] | None:
    """The host's counters, or None if its namespace is gone."""
    r = subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", SAVE, "-c", "-t", "filter"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        return None
    found = parse_saved(r.stdout)
    return {k: found[k] for k in COUNTERS if k in found}


def parse_saved(text: str) -> dict[str, int]:
    """Packet counts by rule comment, from `iptables-save -c`: one process for all chains."""
    found = {}
    for line in text.splitlines():
        if line.startswith("[") and "--comment" in line:
            packets = int(line[1:line.index(":")])
            found[line.split("--comment ", 1)[1].split()[0].strip('"')] = packets
    return found


def available() -> tuple[bool, str]:
    """Whether the rules above load here, tried in a throwaway namespace."""
    if os.geteuid() != 0:
        return False, "not root"
    ns = f"tb{os.getpid() % 0xFFFFFF:06x}-nfprobe"
    if subprocess.run(["ip", "netns", "add", ns], capture_output=True).returncode != 0:
        return False, "cannot create a network namespace"
    try:
        r = subprocess.run(["ip", "netns", "exec", ns, RESTORE, "-w", "--noflush"],
                           input=restore_script(rules("lo", connectable=False)), capture_output=True, text=True)
        if r.returncode != 0:
            return False, f"{RESTORE} of the per-host rules failed: {r.stderr.strip()[:200]}"
        return True, f"{IPTABLES} with conntrack and string matches works in a namespace"
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


BLOCK = 16 * 1024     # one BitTorrent request; less than this in a second is not a transfer


def tcp_table(pid: int, peer_port: int) -> dict[tuple, tuple[bool, int, int, int]] | None:
    """The host's established TCP connections to other peers, from `ss` run in its namespace:
    {(local port, remote address, remote port): (inbound, bytes acked, bytes received, send queue)}.
    The send queue is what the client has written and the other end not yet acknowledged:
    the kernel delivers it even if the client closes the socket now.

    Only sockets the client holds (inode != 0): a connection the kernel completed in a
    listen backlog that the client never accepted is not one of its connections. All peers
    listen on the same port, so a connection to that remote port was dialed; one on that
    local port from another remote port was accepted.
    """
    r = subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", "ss", "-tinHe", "state", "established"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        return None
    table: dict[tuple, tuple[bool, int, int, int]] = {}
    key = None
    for line in r.stdout.splitlines():
        if not line[:1].isspace():
            fields = line.split()
            key = None
            if len(fields) < 5 or fields[4] == "ino:0":
                continue
            laddr, lport = fields[2].rsplit(":", 1)
            raddr, rport = fields[3].rsplit(":", 1)
            lport_i, rport_i = int(lport), int(rport)
            # a client that the tracker lists to itself may dial itself: not a peer connection
            if (rport_i == peer_port or lport_i == peer_port) and raddr != laddr:
                key = (lport_i, raddr, rport_i)
                table[key] = (rport_i != peer_port, 0, 0, int(fields[1]))
        elif key is not None:
            info = dict(f.split(":", 1) for f in line.split() if f.startswith(("bytes_acked:", "bytes_received:")))
            inbound, _, _, send_q = table[key]
            table[key] = (inbound, int(info.get("bytes_acked", 0)), int(info.get("bytes_received", 0)), send_q)
    return table


def tcp_activity(before: dict | None, now: dict | None) -> dict[str, int]:
    """Connections by direction, how many moved at least one block each way since `before`,
    and the bytes queued for sending on all of them. In the sampler's hot path (each peer,
    each second, ~50 connections each): counted in locals."""
    now = now or {}
    get = (before or {}).get
    inbound = uploading = downloading = queued = 0
    for key, (into, acked, received, send_q) in now.items():
        inbound += into
        if (b := get(key)) is not None:
            acked -= b[1]
            received -= b[2]
        uploading += acked >= BLOCK
        downloading += received >= BLOCK
        queued += send_q
    return {"tcp_in": inbound, "tcp_out": len(now) - inbound, "tcp_uploading": uploading,
            "tcp_downloading": downloading, "tcp_send_queue_bytes": queued}


# ------------------------------------------------------------ flow accounting (testbed.flows reads it)

ACCOUNTING_SYSCTLS = ("net/netfilter/nf_conntrack_acct", "net/netfilter/nf_conntrack_events")


def switch_on_accounting(ns_path: str) -> None:
    """Accounting and events on in the namespace at `ns_path` (per namespace, accounting is off
    by default), written to its /proc/sys by a thread that entered it (no process). Before
    the namespace's traffic begins: an entry gets counters only if accounting was on when it
    was made."""
    from testbed.flows import in_namespace

    def write() -> None:
        for key in ACCOUNTING_SYSCTLS:
            with open(f"/proc/sys/{key}", "w") as f:
                f.write("1")
    try:
        in_namespace(ns_path, write)
    except OSError as exc:
        raise RunError(f"conntrack accounting could not be switched on in {ns_path}: {exc}") from None


def enable_accounting(ns_path: str, host: str = "") -> None:
    """What makes conntrack count flows in the namespace at `ns_path` (once per namespace,
    before its traffic begins):
    - a rule that uses conntrack (HOOK_RULE), for IPv4 and IPv6: conntrack sees a namespace's
      traffic only once something there needs it (Linux >= 4.10), so a fresh namespace tracks
      nothing. The rule matches nothing that matters and has no target. Loading it loads
      conntrack, whose sysctls exist only then. A client's host gets it with its other rules
      (`install(..., accounting=True)`);
    - accounting and events on (`switch_on_accounting`)."""
    for restore in (RESTORE, RESTORE6):
        load(ns_path, host or ns_path, [["-A", *HOOK_RULE]], restore)
    switch_on_accounting(ns_path)
