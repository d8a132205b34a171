#!/usr/bin/env python3
"""The recipes of the OCI images the demos and tests use, and the build that runs them.

Run it through `images/build.sh` (which serialises concurrent builds). Every image is a
multi-platform OCI archive in out/images/ whose root filesystem is assembled from Debian
packages of each architecture (see debian.py) and written by oci.py. Nothing is executed
for a foreign architecture, so one amd64 machine builds every platform.

    build.py [--force] [NAME...]     NAME as in IMAGES, e.g. demo-app-1.0, redis

An archive is rebuilt only when it is older than one of this directory's scripts or
lacks a wanted platform; the build is deterministic, so a rebuild of unchanged recipes
gives the same bytes.
Environment: SHOAL_IMAGE_ARCHES (Debian names, default "amd64 arm64"; "armhf" adds
linux/arm/v7).
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from typing import Callable

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import debian  # noqa: E402
import oci  # noqa: E402
from debian import log  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
OUT = os.path.join(REPO, "out", "images")
CACHE = os.path.join(OUT, ".cache")

# Applets linked when the host cannot run its busybox to ask for the full list.
MIN_APPLETS = """bin/sh bin/ash bin/ls bin/cat bin/echo bin/sleep bin/kill bin/ps bin/hostname
bin/dd bin/true bin/false bin/ping bin/mkdir bin/rm bin/cp bin/mv bin/ln bin/grep bin/sed
bin/date bin/pwd bin/uname usr/bin/env usr/bin/head usr/bin/tail usr/bin/tr usr/bin/wget
usr/bin/nc usr/bin/nslookup usr/bin/id usr/bin/wc usr/bin/top sbin/ip usr/sbin/httpd""".split()


@dataclass
class Ctx:
    """What a recipe gets: the rootfs to fill and the Debian packages of its architecture."""

    rootfs: str
    sysroot: debian.Sysroot
    used: set[str] = field(default_factory=set)  # packages whose files were copied

    def install(self, packages: list[str], paths: list[str]) -> None:
        self.sysroot.add_many(packages)
        self.used |= self.sysroot.install(self.rootfs, paths)

    def write(self, path: str, text: str, mode: int = 0o644) -> None:
        full = os.path.join(self.rootfs, path.lstrip("/"))
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "w") as f:
            f.write(text)
        os.chmod(full, mode)

    def mkdir(self, path: str, mode: int = 0o755) -> None:
        full = os.path.join(self.rootfs, path.lstrip("/"))
        os.makedirs(full, exist_ok=True)
        os.chmod(full, mode)  # explicit: makedirs' mode is filtered by the umask


@dataclass
class Image:
    name: str  # out/images/<name>.tar
    ref: str  # full reference, recorded in index.json
    recipe: Callable[[Ctx], dict]  # fills the rootfs, returns the image config's "config"


# --- what every image has ---


def busybox_applets(sysroots: dict[str, debian.Sysroot]) -> list[str]:
    """Paths of busybox's applets, asked from the host's own busybox-static (the applet
    set is the same on every architecture: one Debian build configuration)."""
    arch = debian.host_arch()
    if arch in sysroots:
        binary = os.path.join(sysroots[arch].add("busybox-static"), "bin", "busybox")
        try:
            out = subprocess.run([binary, "--list-full"], check=True, capture_output=True, text=True).stdout
            return [p for p in out.split() if "/" in p]  # not the bare "linuxrc"
        except (OSError, subprocess.CalledProcessError) as err:
            log(f"cannot run {binary} ({err}); linking a minimal applet set")
    return MIN_APPLETS


def base(ctx: Ctx, applets: list[str]) -> None:
    """busybox with its applet links, the usual mount points, users and hosts."""
    ctx.install(["busybox-static"], ["/bin/busybox"])
    for applet in applets:
        link = os.path.join(ctx.rootfs, applet)
        if os.path.lexists(link):
            continue  # a real program of the image wins over the applet
        os.makedirs(os.path.dirname(link), exist_ok=True)
        # Relative links stay correct wherever the rootfs is unpacked (and never point
        # at the host's /bin/busybox when inspected outside a container).
        os.symlink(os.path.relpath("/bin/busybox", os.path.dirname("/" + applet)), link)
    for d in ("dev", "proc", "sys", "etc", "var", "run"):
        ctx.mkdir(d)
    ctx.mkdir("tmp", 0o1777)
    ctx.mkdir("var/tmp", 0o1777)
    ctx.mkdir("root", 0o700)
    ctx.write("etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
    ctx.write("etc/group", "root:x:0:\nnogroup:x:65534:\n")
    # The runtime may bind-mount its own; this one makes `localhost` work regardless.
    ctx.write("etc/hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")


def copyrights(ctx: Ctx) -> None:
    """Each Debian package we took files from ships its licence notice along."""
    for pkg in sorted(ctx.used):
        path = f"/usr/share/doc/{pkg}/copyright"
        try:
            if ctx.sysroot.lookup(path):
                ctx.sysroot.install(ctx.rootfs, [path])
        except RuntimeError:
            pass  # a doc directory that is a symlink to another package's: not worth it


# --- the images ---

HTTPD = ["/bin/busybox", "httpd", "-f", "-p", "8000", "-h", "/www"]

# Lets a test see the front end reach the database by its service name (lab step 3):
# GET /cgi-bin/db answers "database database: +PONG" when redis is reachable.
DB_CGI = r"""#!/bin/sh
# CGI of busybox httpd: PING the redis named $DB_HOST (default: the service "database").
host=${DB_HOST:-database}
printf 'Content-Type: text/plain\r\n\r\n'
reply=$(printf 'PING\r\n' | nc -w 2 "$host" 6379 2>&1 | tr -d '\r')
case "$reply" in
  +PONG*) echo "database $host: $reply" ;;
  *) echo "database $host: unreachable ${reply}" ;;
esac
"""


def web_page(ctx: Ctx, version: str) -> None:
    ctx.write(
        "www/index.html",
        "<!doctype html>\n<html><head><title>demo app {v}</title></head>\n"
        "<body><h1>demo app {v}</h1><p>version {v}</p></body></html>\n".format(v=version),
    )
    ctx.write("www/version", version + "\n")  # easy for tests to compare
    ctx.write("www/cgi-bin/db", DB_CGI, 0o755)


def demo_app(version: str) -> Callable[[Ctx], dict]:
    def recipe(ctx: Ctx) -> dict:
        web_page(ctx, version)
        return {"Cmd": HTTPD, "ExposedPorts": {"8000/tcp": {}}, "Labels": {"org.opencontainers.image.version": version}}

    return recipe


def demo_app_broken(version: str) -> Callable[[Ctx], dict]:
    """A release that starts, says something, and fails a second later (update rollback)."""

    def recipe(ctx: Ctx) -> dict:
        web_page(ctx, version)
        script = (
            f'echo "demo app {version} starting"; sleep 1; '
            'echo "fatal: cannot read configuration" >&2; exit 1'
        )
        return {
            "Cmd": ["/bin/sh", "-c", script],
            "ExposedPorts": {"8000/tcp": {}},
            "Labels": {"org.opencontainers.image.version": version},
        }

    return recipe


def redis(ctx: Ctx) -> dict:
    # Debian's redis-server is a symlink to redis-check-rdb (redis-tools): one binary that
    # picks its role from argv[0]; install() follows the link and copies both.
    ctx.install(["redis-server", "redis-tools"], ["/usr/bin/redis-server", "/usr/bin/redis-cli"])
    ctx.mkdir("data")
    return {
        # Reachable from other containers, in the foreground, nothing written to disk.
        # On arm64 redis 7.0 probes the kernel for a copy-on-write bug that can corrupt
        # background saves, and exits if the probe cannot run (qemu-user, odd /proc);
        # with no saves at all the bug cannot bite, so the probe's verdict is waived.
        "Cmd": [
            "/usr/bin/redis-server",
            *("--bind", "0.0.0.0", "--protected-mode", "no", "--save", "", "--appendonly", "no"),
            *("--ignore-warnings", "ARM64-COW-BUG"),
        ],
        "ExposedPorts": {"6379/tcp": {}},
        "WorkingDir": "/data",
    }


IMAGES = [
    Image("demo-app-1.0", "demo/app:1.0", demo_app("1.0")),
    Image("demo-app-2.0", "demo/app:2.0", demo_app_broken("2.0")),
    Image("demo-app-3.0", "demo/app:3.0", demo_app("3.0")),
    Image("redis", "redis:latest", redis),
]


def inputs_mtime() -> float:
    return max(os.path.getmtime(p) for p in glob.glob(os.path.join(HERE, "*")) if p.endswith((".py", ".sh")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--force", action="store_true", help="rebuild even if up to date")
    ap.add_argument("names", nargs="*", help=f"default: all of {', '.join(i.name for i in IMAGES)}")
    a = ap.parse_args()
    unknown = set(a.names) - {i.name for i in IMAGES}
    if unknown:
        ap.error(f"unknown image(s): {', '.join(sorted(unknown))}")
    arches = os.environ.get("SHOAL_IMAGE_ARCHES", "amd64 arm64").split()
    bad = [x for x in arches if x not in debian.ARCHES]
    if bad:
        sys.exit(f"images: unknown architecture(s) {bad}; known: {list(debian.ARCHES)}")
    wanted = {"/".join(filter(None, ("linux", *debian.ARCHES[x][:2]))) for x in arches}
    os.umask(0o022)  # file modes in the layers must not depend on the caller's umask
    os.makedirs(OUT, exist_ok=True)
    newest_input = inputs_mtime()

    def up_to_date(out: str) -> bool:
        if not os.path.exists(out) or os.path.getmtime(out) < newest_input:
            return False
        try:
            return oci.platforms(out) == wanted  # SHOAL_IMAGE_ARCHES may have changed
        except (OSError, KeyError, ValueError, tarfile.TarError):
            return False  # unreadable: rebuild it

    todo = [
        img
        for img in IMAGES
        if (not a.names or img.name in a.names) and (a.force or not up_to_date(os.path.join(OUT, img.name + ".tar")))
    ]
    if not todo:
        log(f"up to date in {os.path.relpath(OUT)}")
        return
    apt = debian.Apt(CACHE, arches)
    sysroots = {arch: debian.Sysroot(apt, arch, CACHE) for arch in arches}
    apt.fetch([("busybox-static", arch) for arch in arches])  # every image has it: one apt run
    applets = busybox_applets(sysroots)
    for img in todo:
        start = time.monotonic()
        platforms = []
        for arch, sysroot in sysroots.items():
            rootfs = os.path.join(CACHE, "rootfs", img.name, arch)
            shutil.rmtree(rootfs, ignore_errors=True)
            os.makedirs(rootfs)
            ctx = Ctx(rootfs, sysroot)
            config = img.recipe(ctx)
            base(ctx, applets)  # after the recipe: its programs win over applet links
            copyrights(ctx)
            platforms.append(
                oci.Platform(
                    sysroot.oci_arch,
                    rootfs,
                    config,
                    variant=sysroot.variant,
                    created_by=f"images/build.sh {img.name} (Debian packages: {', '.join(sorted(ctx.used))})",
                )
            )
        out = os.path.join(OUT, img.name + ".tar")
        digest = oci.write_archive(out, img.ref, platforms)
        # The archive is the product; `oci.py unpack` gives any platform's rootfs back.
        shutil.rmtree(os.path.join(CACHE, "rootfs", img.name))
        log(
            f"{os.path.relpath(out, REPO)}  {img.ref}  {os.path.getsize(out) / 1e6:.1f} MB  "
            f"{digest[:19]}  ({time.monotonic() - start:.1f}s)"
        )


if __name__ == "__main__":
    try:
        main()
    except RuntimeError as err:
        sys.exit(f"images: {err}")
