"""The machine's load during a run: host.csv's rows condensed, and the warning when the CPUs
were saturated long enough to distort the result."""
from testbed.run import hostload


def rows(busy: list[float]) -> list[dict]:
    return [{"t": float(i), "cpu_busy": b, "cpu_iowait": 0.0, "testbed_cpu": 0.05, "mem_available_bytes": 10**9}
            for i, b in enumerate(busy)]


def test_a_saturated_stretch_is_warned_about_with_its_length():
    h = hostload.summarize(rows([0.3] * 20 + [0.97] * 12 + [0.4] * 20))
    assert h["saturated_s"] == 12 and h["longest_saturated_s"] == 12
    assert "12 s of the swarm's 51 s" in h["warning"]


def test_brief_peaks_are_not_a_warning():
    h = hostload.summarize(rows([0.3, 0.95, 0.3, 0.95] * 10))
    assert h["saturated_s"] == 20 and h["longest_saturated_s"] == 1
    assert h["warning"] is not None         # half the run saturated: warned, however short each peak
    assert hostload.summarize(rows([0.3] * 50 + [0.99] * 4))["warning"] is None    # 4 s: below 5 s


def test_a_sample_of_this_machine_is_a_share_of_its_cores():
    load = hostload.HostLoad()
    sum(i * i for i in range(200_000))      # some CPU for the interval
    row = load.sample(1.0)
    assert 0.0 <= row["cpu_busy"] <= 1.0 and 0.0 <= row["cpu_iowait"] <= 1.0
    assert row["testbed_cpu"] > 0 and row["mem_available_bytes"] > 0


def test_the_warning_says_who_took_the_cores():
    r = rows([0.97] * 20)
    for row in r:
        row.update(containers_cpu=1.6, cpu_softirq=0.2, testbed_cpu=0.01)
    h = hostload.summarize(r)
    assert h["containers_cpu_mean"] == 1.6 and h["testbed_cpu_mean"] == 0.01
    assert "the containers (clients and their kernel work) 1.60" in h["warning"]
    assert "the testbed 0.01" in h["warning"]
