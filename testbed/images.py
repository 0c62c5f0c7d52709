"""Container images built from Debian packages without a registry.

Each images/<name>/image.yaml lists Debian packages. The root filesystem is made by
mmdebstrap (Debian's tool; it uses apt and so reaches wherever apt reaches) and loaded
with `docker import`, because no registry can be pulled from. The tag is a hash of the
definition, so a changed definition is rebuilt and an unchanged one is skipped.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from testbed.errors import InputError, PreflightError, RunError

IMAGE_DIR = Path(__file__).resolve().parent.parent / "images"
REPO = "testbed"
# Every image can be a Mininet host: bash for the node's shell, ifconfig (net-tools) and ip
# for Mininet's interface set-up, tc and ethtool for shaping from inside the namespace,
# procps for kill, ping for checks between emulated hosts.
BASE_PACKAGES = ["bash", "iproute2", "net-tools", "procps", "ethtool", "iputils-ping"]
PACKAGE_LIST = "/etc/testbed-packages.txt"
BUILDER_VERSION = "1"   # bump when the build recipe below changes


class ImageSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    description: str = ""
    suite: str = "bookworm"
    packages: list[str]
    capabilities: list[str] = []
    files: dict[str, str] = {}          # file in the image's folder -> absolute path in the image


@dataclass(frozen=True)
class Image:
    name: str
    spec: ImageSpec
    digest: str
    folder: Path

    @property
    def tag(self) -> str:
        return f"{REPO}/{self.name}:{self.digest}"

    def mmdebstrap_argv(self) -> list[str]:
        pkgs = ",".join(BASE_PACKAGES + list(self.spec.packages))
        return ["mmdebstrap", "--variant=minbase", f"--include={pkgs}",
                "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-exclude=/usr/share/man/*",
                "--dpkgopt=path-exclude=/usr/share/locale/*",
                f"--customize-hook=chroot \"$1\" dpkg-query -W > \"$1{PACKAGE_LIST}\"",
                *[f"--customize-hook=upload {self.folder / src} {dst}" for src, dst in sorted(self.spec.files.items())],
                *[f"--customize-hook=chmod 0755 \"$1{dst}\"" for dst in sorted(self.spec.files.values())],
                self.spec.suite, "-"]

    def import_argv(self) -> list[str]:
        return ["docker", "import", "--change", 'CMD ["sleep", "infinity"]',
                "--change", f"LABEL testbed.image={self.name} testbed.digest={self.digest}", "-", self.tag]


def load_image(name: str, image_dir: Path = IMAGE_DIR) -> Image:
    path = image_dir / name / "image.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.parent.name for p in image_dir.glob("*/image.yaml")))
        raise InputError(f"{path}: no such image definition (known images: {known})")
    raw = path.read_bytes()
    try:
        spec = ImageSpec.model_validate(yaml.safe_load(raw))
    except (ValidationError, yaml.YAMLError) as exc:
        raise InputError(f"{path}: invalid image definition: {str(exc).splitlines()[0]}") from None
    h = hashlib.sha256(raw + json.dumps([BASE_PACKAGES, BUILDER_VERSION]).encode())
    for src, dst in sorted(spec.files.items()):
        if not (path.parent / src).is_file():
            raise InputError(f"{path}: files: no such file {path.parent / src}")
        h.update((path.parent / src).read_bytes())
    return Image(name, spec, h.hexdigest()[:12], path.parent)


def all_images(image_dir: Path = IMAGE_DIR) -> list[Image]:
    return [load_image(p.parent.name, image_dir) for p in sorted(image_dir.glob("*/image.yaml"))]


def exists(client, image: Image) -> bool:
    import docker.errors
    try:
        client.images.get(image.tag)
        return True
    except docker.errors.ImageNotFound:
        return False


def build(image: Image, log: Path) -> None:
    """mmdebstrap | docker import; the build log goes to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        deb = subprocess.Popen(image.mmdebstrap_argv(), stdout=subprocess.PIPE, stderr=out)
        imp = subprocess.run(image.import_argv(), stdin=deb.stdout, stdout=out, stderr=out)
        deb.stdout.close()
        rc = deb.wait()
    if rc != 0 or imp.returncode != 0:
        raise RunError(f"building image {image.name} failed (mmdebstrap exit {rc}, docker import exit "
                       f"{imp.returncode}); see {log}")


def require(client, names: set[str]) -> dict[str, Image]:
    """Preflight: every image the plan needs is built and current."""
    images = {n: load_image(n) for n in sorted(names)}
    missing = [i for i in images.values() if not exists(client, i)]
    if missing:
        which = ", ".join(f"{i.name} ({i.tag})" for i in missing)
        raise PreflightError(f"image(s) not built or out of date: {which}; run: testbed images build")
    return images
