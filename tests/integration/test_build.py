"""A client's own CI testing its new build: a group names a binary (here transmission's own
executable with its version string patched, so that the run can show which one ran) or a
local image; the testbed puts the build into the client's image and runs the swarm."""
from __future__ import annotations

import io
import json
import tarfile

import yaml

from tests.conftest import experiment_dict
from tests.integration.conftest import cli

RELEASE, PATCHED = b"bb6b5a062e", b"tbbuild001"     # transmission 3.00's revision, and ours


def transmission_binary(client) -> bytes:
    from testbed import images
    c = client.containers.create(images.load_image("transmission").tag, labels={"testbed.test": "build"})
    try:
        stream, _ = c.get_archive("/usr/bin/transmission-daemon")
        tar = tarfile.open(fileobj=io.BytesIO(b"".join(stream)))
        return tar.extractfile(tar.getmembers()[0]).read()
    finally:
        c.remove()


def test_a_client_build_is_what_runs(docker_client, tmp_path):
    binary = transmission_binary(docker_client)
    assert binary.count(RELEASE) >= 1
    (tmp_path / "transmission-daemon").write_bytes(binary.replace(RELEASE, PATCHED))
    d = experiment_dict(content={"size": "2MiB"})
    d["peers"][0]["count"] = 2
    d["peers"][0]["build"] = {"binary": "transmission-daemon"}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(d))
    r = cli("run", str(tmp_path / "exp.yaml"), "--results", str(tmp_path / "results"), timeout=400)
    assert r.returncode == 0, r.stdout + r.stderr
    run = next((tmp_path / "results").iterdir())
    man = json.loads((run / "manifest.json").read_text())
    # the clients say which build they are (their RPC's version string): the leechers ran ours
    assert PATCHED.decode() in man["client_versions"]["leecher1"], man["client_versions"]
    assert PATCHED.decode() not in man["client_versions"]["origin"]
    s = json.loads((run / "summary.json").read_text())
    assert s["status"] == "complete" and all(p["sha256_ok"] for p in s["peers"])
    assert [b["kind"] for b in man["builds"].values()] == ["binary"]


def test_a_missing_local_image_is_refused_before_anything_starts(docker_client, tmp_path):
    d = experiment_dict()
    d["peers"][0]["build"] = {"image": "testbed/no-such-build:1"}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(d))
    r = cli("run", str(tmp_path / "exp.yaml"), "--results", str(tmp_path / "results"))
    assert r.returncode == 2 and "build.image: there is no local Docker image 'testbed/no-such-build:1'" in r.stderr
    assert not (tmp_path / "results").exists()
    assert docker_client.containers.list(all=True, filters={"label": "testbed.run"}) == []
