"""Files a user names are read defensively: each problem is one sentence naming the file
and, where there is one, the key; nothing is read that could hang or exhaust the machine."""
import pytest
import yaml

from testbed.errors import InputError
from testbed.model import load_experiment
from tests.conftest import experiment_dict


def error_for(tmp_path, text: str | bytes, name: str = "exp.yaml") -> str:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(InputError) as exc:
        load_experiment(path)
    assert exc.value.exit_code == 2
    return str(exc.value)


def valid_text() -> str:
    return yaml.safe_dump(experiment_dict())


def test_a_key_written_twice_is_refused_with_both_lines(tmp_path):
    msg = error_for(tmp_path, valid_text() + "timeout: 9m\n")
    assert "key 'timeout' is written twice (first at line" in msg


def test_bytes_that_are_not_utf8_are_located(tmp_path):
    msg = error_for(tmp_path, b"version: 1\nname: \"q\xff\"\n")
    assert msg.endswith("not UTF-8 text (byte 0xff at line 2, column 9)")


def test_deep_nesting_is_refused_before_the_parser_recurses(tmp_path):
    assert "nested more than 64 levels deep" in error_for(tmp_path, "version: " + "[" * 5000 + "]" * 5000)


def test_an_alias_bomb_is_refused_without_being_expanded(tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 30)]
    msg = error_for(tmp_path, valid_text().replace("content:", "\n".join(lines) + "\ncontent:", 1))
    assert "aliases expand this to more than 100000 values" in msg


def test_a_value_quoted_in_an_error_is_an_excerpt(tmp_path):
    msg = error_for(tmp_path, valid_text().replace("size: 4MiB", "size: " + "9" * 5000 + "x"))
    assert "content.size" in msg and len(msg) < 250


def test_a_capitalised_unknown_key_is_named_as_written(tmp_path):
    assert error_for(tmp_path, valid_text() + "Timeout: 5m\n").endswith("unknown key 'Timeout' (did you mean 'timeout'?)")


def test_a_trace_that_is_a_device_is_not_read(tmp_path):
    d = experiment_dict()
    d["peers"][0]["access"] = {"up": "1mbit", "down_trace": "/dev/zero"}
    msg = error_for(tmp_path, yaml.safe_dump(d))
    assert "peers[0].access.down_trace" in msg and "not a regular file" in msg


def test_trace_rows_must_be_finite(tmp_path):
    (tmp_path / "t.csv").write_text("0,1mbit\nnan,2mbit\n")
    d = experiment_dict()
    d["peers"][0]["access"] = {"up": "1mbit", "down_trace": "t.csv"}
    assert "finite" in error_for(tmp_path, yaml.safe_dump(d))


@pytest.mark.parametrize("path,value,phrase", [
    (("content", "size"), 16, "needs a unit"),
    (("content", "size"), "5mb", "capital B"),
    (("content", "piece_size"), "1GiB", "16KiB to 16MiB"),
    (("tracker",), {"port": 70000}, "port from 1 to 65535"),
    (("peers", 0, "access", "up"), "20mbps", "write '20mbit'"),
    (("peers", 0, "access", "up"), "0.5bit", "from 8kbit to 10gbit"),
    (("peers", 0, "access", "queue"), 0, "from 1 to 100000 packets"),
    (("peers", 0, "count"), 100_000, "from 1 to 1021"),
    (("peers", 0, "behaviour"), {"seeding": {"ratio": float("nan")}}, "finite"),
])
def test_out_of_range_and_ambiguous_values_name_the_key(tmp_path, path, value, phrase):
    d = experiment_dict()
    node = d
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    msg = error_for(tmp_path, yaml.safe_dump(d))
    assert phrase in msg, msg
    assert ".".join(str(k) for k in path if isinstance(k, str)).split(".")[-1] in msg
