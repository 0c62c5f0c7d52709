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
    local_tag: str | None = None     # a client build given as a local image: used as it is

    @property
    def tag(self) -> str:
        return self.local_tag or f"{REPO}/{self.name}:{self.digest}"

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


def derived(name: str, build: dict) -> Image:
    """The image of a client build: the client's image with the build's binary or package in
    it (tagged by the base's definition and the file's sha256), or the local image named."""
    base = load_image(build["base"])
    if build["kind"] == "image":
        return Image(name, base.spec, base.digest, base.folder, local_tag=build["source"])
    digest = hashlib.sha256(f"{base.digest}:{build['kind']}:{build['sha256']}".encode()).hexdigest()[:12]
    return Image(name, base.spec, digest, base.folder)


def build_derived(client, image: Image, build: dict) -> None:
    """docker build FROM the client's image: the binary copied over the client's executable,
    or the package installed with dpkg (no network: its dependencies must be in the image)."""
    import io
    import tarfile
    base = load_image(build["base"])
    src = Path(build["source"])
    if build["kind"] == "binary":
        steps = f"COPY payload {build['dest']}\nRUN chmod 0755 {build['dest']}\n"
    else:
        steps = (f"COPY payload /tmp/{src.name}\nRUN dpkg -i /tmp/{src.name} && rm /tmp/{src.name} && "
                 f"dpkg-query -W > {PACKAGE_LIST}\n")
    dockerfile = (f"FROM {base.tag}\n{steps}LABEL testbed.image={image.name} testbed.digest={image.digest} "
                  f"testbed.build.sha256={build['sha256']}\n").encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
        tar.add(str(src), arcname="payload")
    buf.seek(0)
    import docker.errors
    try:
        client.images.build(fileobj=buf, custom_context=True, tag=image.tag, rm=True, forcerm=True)
    except docker.errors.BuildError as exc:
        log = "".join(str(x.get("stream") or x.get("error") or "") for x in exc.build_log)[-400:]
        raise PreflightError(f"group '{build['group']}': build.{build['kind']}: {src} does not go into the "
                             f"{build['client']} image "
                             f"({exc.msg}): {log.strip()}") from None


def require(client, names: set[str], builds: dict | None = None) -> dict[str, Image]:
    """Preflight: every image the plan needs is built and current; a client build's image is
    made here (a few seconds: one layer over the client's image) if it is not there yet."""
    builds = builds or {}
    images = {n: load_image(n) for n in sorted(names) if n not in builds}
    for name, b in builds.items():
        base = load_image(b["base"])
        if not exists(client, base):
            raise PreflightError(f"image(s) not built or out of date: {base.name} ({base.tag}); "
                                 "run: testbed images build")
        images[name] = derived(name, b)
        if b["kind"] == "image":
            if not exists(client, images[name]):
                raise PreflightError(f"group '{b['group']}': build.image: there is no local Docker image '{b['source']}' "
                                     "(docker images lists what there is)")
        elif not exists(client, images[name]):
            build_derived(client, images[name], b)
    missing = [i for i in images.values() if not exists(client, i)]
    if missing:
        which = ", ".join(f"{i.name} ({i.tag})" for i in missing)
        raise PreflightError(f"image(s) not built or out of date: {which}; run: testbed images build")
    return images
