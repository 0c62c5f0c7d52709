"""Bring-up and tear-down time of N peers, next to plain `docker run` of as many containers.

    sudo .venv/bin/python benchmarks/bringup.py [N ...]      (default: 10 50)

Testbed bring-up = containers (Docker SDK, 8 in parallel) + Mininet network (bridges, veths,
addresses, HTB on both ends of every access link); tear-down = what a run does (the node
shells ended, then removal by run identity). The baseline is as many bare containers
(`--network none`) created and then removed with the Docker SDK, 8 at a time, as the testbed
does. The ratios are testbed / baseline, for bring-up and tear-down each.
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from mininet.log import setLogLevel

from testbed import cleanup, images, network, runtime
from testbed.model import parse_experiment
from testbed.plan import plan
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
    t0 = time.perf_counter()
    hosts = runtime.start_containers(client, p, imgs, workdir / str(n))
    tn = time.perf_counter()
    net = network.build(p, {k: h.pid for k, h in hosts.items()}, HtbShaper())
    t1 = time.perf_counter()
    NETWORK_S[n] = t1 - tn
    network.release(net)
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


def main(sizes: list[int]) -> None:
    setLogLevel("warning")
    client = runtime.docker_client()
    image = images.load_image("transmission").tag
    print(f"{'N':>4} {'hosts':>5} | {'testbed up':>10} {'down':>6} | {'bare up':>8} {'down':>6} | "
          f"{'up ratio':>8} {'down ratio':>10} | {'network':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            up, down, count = testbed_cycle(client, n, Path(tmp))
            d_up, d_down = docker_cycle(client, image, count)
            print(f"{n:>4} {count:>5} | {up:>9.2f}s {down:>5.2f}s | {d_up:>7.2f}s {d_down:>5.2f}s | "
                  f"{up / d_up:>8.2f} {down / d_down:>10.2f} | {NETWORK_S[n]:>6.2f}s")

if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [10, 50])
