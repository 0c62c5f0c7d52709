"""The images a split swarm's workers need, copied from the coordinator where a worker lacks
them (playbooks/images.yml): no registry. An image's tag carries a digest of its recipe
(testbed/images.py), so a worker that has the tag has that very image.

Only the images the testbed builds are copied. A client build (`build:` in a group) is made
on each worker from its base image and the files the experiment names, which travel with the
experiment's directory.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from testbed.errors import RunError
from testbed.plan.build import Plan

CHUNK = 1 << 20


def archive_name(tag: str) -> str:
    """The file an image is saved to (the playbook derives the same name)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", tag) + ".tar"


def needed(whole: Plan, placement: dict[str, str]) -> dict[str, list[str]]:
    """worker -> the tags its hosts' containers start from (a build's: its base image's)."""
    from testbed.images import load_image
    out: dict[str, set[str]] = {}
    for h in whole.hosts:
        name = whole.builds[h.image]["base"] if h.image in whole.builds else h.image
        out.setdefault(placement[h.name], set()).add(load_image(name).tag)
    return {w: sorted(tags) for w, tags in out.items()}


def save(client, tags: list[str], directory: Path) -> None:
    """Each image, as `docker save` writes it, into directory/archive_name(tag) (unless saved
    there already)."""
    import docker.errors
    for tag in tags:
        if (directory / archive_name(tag)).exists():
            continue
        try:
            image = client.images.get(tag)
        except docker.errors.ImageNotFound:
            raise RunError(f"image {tag} is not here to copy to a worker: run `testbed images build`") from None
        with (directory / archive_name(tag)).open("wb") as f:
            for chunk in image.save(chunk_size=CHUNK, named=True):
                f.write(chunk)


def ensure(inventory: Path, workers: list[str], wanted: dict[str, list[str]], job: str, local: Path,
           progress: Callable[[str], None] | None = None, client=None) -> dict[str, list[str]]:
    """Copies to each worker the images of `wanted` it lacks; returns what was copied where."""
    from testbed.workers.ansible import run_playbook
    say = progress or (lambda _line: None)
    common = {"testbed_job": job, "testbed_local": str(local), "testbed_images": wanted}
    r = run_playbook("images", inventory, {**common, "testbed_images_step": "check"}, say, workers_named=workers)
    if r.problems:
        raise RunError("; ".join(r.problems))
    missing = {w: list(r.workers[w].report.get("missing", [])) if w in r.workers else [] for w in workers}
    tags = sorted({t for ts in missing.values() for t in ts})
    if not tags:
        return {}
    say(f"images: copying {', '.join(tags)} to " + ", ".join(w for w, ts in missing.items() if ts))
    if client is None:
        from testbed.runtime import docker_client
        client = docker_client()
    save(client, tags, local)
    r = run_playbook("images", inventory, {**common, "testbed_images_step": "load", "testbed_missing": missing},
                     say, workers_named=workers)
    if r.problems:
        raise RunError("; ".join(r.problems))
    return {w: ts for w, ts in missing.items() if ts}
