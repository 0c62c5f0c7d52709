"""host.csv's `containers_cpu`: the CPU the run's containers took, read from their control
groups. A container that spins one core must show about one core; an idle machine's
containers must not."""
from __future__ import annotations

import os
import secrets
import time

from testbed import images
from testbed.run.hostload import HostLoad


def test_a_container_spinning_one_core_shows_about_one_core(docker_client):
    image = images.all_images()[0].tag
    run_id = f"hostload-{secrets.token_hex(3)}"
    c = docker_client.containers.run(image, entrypoint=["sh", "-c", "while :; do :; done"], detach=True,
                                     network_mode="none", labels={"testbed.run": run_id}, name=f"tb-{run_id}")
    try:
        c.reload()
        load = HostLoad([c.attrs["State"]["Pid"]])
        time.sleep(2.0)
        busy = load.sample(2.0)
        c.kill()
        c.wait(timeout=30)
        time.sleep(1.0)
        idle = load.sample(3.0)
    finally:
        c.remove(force=True)
    # a spinning shell gets most of a core on a 2-core machine with nothing else running;
    # 0.5 leaves room for the rest of the machine's load
    assert busy["containers_cpu"] >= 0.5, busy
    assert busy["cpu_busy"] >= busy["containers_cpu"] / os.cpu_count() * 0.9   # a part of the machine's load
    assert idle["containers_cpu"] < 0.2, idle
