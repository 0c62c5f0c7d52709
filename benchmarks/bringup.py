"""Bring-up and tear-down time of N peers, next to plain `docker run` of as many containers.

    sudo .venv/bin/python benchmarks/bringup.py [N ...] [--times K]      (default: 10 50, once)

Testbed bring-up = what a run does: containers (Docker SDK, 8 in parallel, each host's
packet guard, flow accounting, netlink handles and Mininet shell set up as its container
comes up) + the network (bridges, veths, addresses, HTB on both ends of every access link);
tear-down = what a run does (the node shells ended, every container's first process killed
at once, then removal by run identity). The baseline is as many bare containers (`--network
none`) created and then removed with the Docker SDK, 8 at a time, as the testbed does. The
ratios are testbed / baseline, for bring-up and tear-down each.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from mininet.log import setLogLevel

from testbed import cleanup, images, network, runtime
from testbed.model import parse_experiment
from testbed.plan import plan
from testbed.run.swarm import prepare_host
from testbed.shaping import HtbShaper


def experiment(n: int):
    return parse_experiment({
        "name": "bench", "content": {"size": "1MiB"},
        "seeders": [{"name": "origin", "access": {"up": "20mbit", "down": "20mbit"}}],
        "peers": [{"name": "peer", "count": n - 1, "access": {"up": "1mbit", "down": "8mbit"}}],
    })


def testbed_cycle(client, n: int, workdir: Path) -> tuple[float, float, int]:
    p = plan(experiment(n), f"bench-20261124-000000-{n:06x}")
    imgs = images.require(client, {h.image for h in p.hosts})
    nodes: dict = {}
    handles: list = []

    def prepare(host) -> None:      # as a run does: each host's guard, accounting, handles and shell as it comes up
        node, h = prepare_host(host.plan, host.pid)
        if node is not None:
            nodes[host.name] = node
        if h is not None:
            handles.append(h)
    t0 = time.perf_counter()
    hosts = runtime.start_containers(client, p, imgs, workdir / str(n), then=prepare)
    tn = time.perf_counter()
    try:
        net = network.build(p, {k: h.pid for k, h in hosts.items()}, HtbShaper(), nodes)
        t1 = time.perf_counter()
    finally:
        for h in handles:           # as a run's teardown does: they keep the namespaces alive
            h.close()
    NETWORK_S[n] = t1 - tn
    network.release(net)
    runtime.kill_containers(hosts.values())
    cleanup.clean(client, p.run_id)
    t2 = time.perf_counter()
    assert not any(cleanup.find(client, p.run_id).values())
    return t1 - t0, t2 - t1, len(p.hosts)


NETWORK_S: dict[int, float] = {}     # the network's part of each bring-up


def docker_cycle(client, image: str, count: int) -> tuple[float, float]:
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(8) as pool:
        t0 = time.perf_counter()
        made = list(pool.map(lambda _: client.containers.run(image, detach=True, network_mode="none", init=True,
                                                             labels={"testbed.bench": "1"}), range(count)))
        t1 = time.perf_counter()
        list(pool.map(lambda c: c.remove(force=True), made))
    return t1 - t0, time.perf_counter() - t1


def main(sizes: list[int], times: int) -> None:
    setLogLevel("warning")
    client = runtime.docker_client()
    image = images.load_image("transmission").tag
    print(f"{'N':>4} {'hosts':>5} | {'testbed up':>10} {'down':>6} | {'bare up':>8} {'down':>6} | "
          f"{'up ratio':>8} {'down ratio':>10} | {'network':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            # a cycle of bare containers first, not counted: the first containers made after a
            # pause were 15-20 % slower (the daemon's and the kernel's caches), and whichever side
            # went first paid it
            docker_cycle(client, image, n + 1)
            ups, downs = [], []
            for _ in range(times):
                up, down, count = testbed_cycle(client, n, Path(tmp))
                d_up, d_down = docker_cycle(client, image, count)
                ups.append(up / d_up)
                downs.append(down / d_down)
                print(f"{n:>4} {count:>5} | {up:>9.2f}s {down:>5.2f}s | {d_up:>7.2f}s {d_down:>5.2f}s | "
                      f"{up / d_up:>8.2f} {down / d_down:>10.2f} | {NETWORK_S[n]:>6.2f}s", flush=True)
            if times > 1:
                print(f"{n:>4} median of {times}: up ratio {statistics.median(ups):.2f}, "
                      f"down ratio {statistics.median(downs):.2f}")


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sizes", nargs="*", type=int, default=[10, 50], help="peers per swarm (default 10 50)")
    ap.add_argument("--times", type=int, default=1, help="cycles of each size, with the median ratios (default 1)")
    args = ap.parse_args()
    main(args.sizes, args.times)
