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
Environment: SHOAL_IMAGE_ARCHES (Debian names, default "amd64 arm64 armhf": linux/amd64,
linux/arm64 and linux/arm/v7).
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
    default: bool = True  # built without names; big ones only when named (their tests name them)


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
    # A recipe that has users of its own writes both files whole (root and nobody too).
    if not os.path.exists(os.path.join(ctx.rootfs, "etc/passwd")):
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


def demo_app_checked(version: str) -> Callable[[Ctx], dict]:
    """The demo app with its own HEALTHCHECK: healthy while it serves its page, until a
    test makes it sick by creating /tmp/sick in the container."""

    def recipe(ctx: Ctx) -> dict:
        config = demo_app(version)(ctx)
        check = "test ! -e /tmp/sick && wget -q -O /dev/null http://127.0.0.1:8000/"
        second = 1_000_000_000
        config["Healthcheck"] = {"Test": ["CMD-SHELL", check], "Interval": second, "Timeout": 2 * second, "Retries": 2}
        return config

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


def python_tree(ctx: Ctx, pkgs: list[str], prefix: str, skip: tuple[str, ...]) -> None:
    """Every file under `prefix` in `pkgs` (Python's standard library is data for
    install(), which copies files, not directories), but the subdirectories in `skip`."""
    ctx.sysroot.add_many(pkgs)
    paths = []
    for pkg in pkgs:
        top = ctx.sysroot.add(pkg)
        for root, dirs, files in os.walk(os.path.join(top, prefix.strip("/"))):
            rel = os.path.relpath(root, top)
            dirs[:] = [d for d in dirs if f"{rel}/{d}".split("/", 3)[-1] not in skip and d != "__pycache__"]
            paths += ["/" + os.path.join(rel, f) for f in files]
    ctx.install(pkgs, sorted(paths))


def python3(ctx: Ctx) -> dict:
    # The interpreter and its pure-Python library; no lib-dynload: the C modules Debian
    # does not build into the interpreter (ssl, sqlite3, ctypes, ...) are not needed by
    # http.server, and leaving them out keeps their libraries out.
    ctx.install(["python3.11-minimal"], ["/usr/bin/python3.11"])
    ctx.sysroot.add_many(["libpython3.11-minimal", "libpython3.11-stdlib"])
    skip = ("lib-dynload", "test", "idlelib", "tkinter", "ensurepip", "lib2to3", "turtledemo", "pydoc_data")
    python_tree(ctx, ["libpython3.11-minimal", "libpython3.11-stdlib"], "/usr/lib/python3.11", skip)
    os.symlink("python3.11", os.path.join(ctx.rootfs, "usr/bin/python3"))
    ctx.mkdir("usr/lib/python3.11/lib-dynload")  # else python warns at every start
    ctx.mkdir("srv/www")
    ctx.write("srv/www/index.html", "<h1>python3 http.server as nobody on port 80</h1>\n")
    return {
        # A non-root server on a port below 1024: as under Docker, the container's
        # namespace lets it (net.ipv4.ip_unprivileged_port_start=0).
        "Cmd": ["/usr/bin/python3", "-m", "http.server", "80", "--directory", "/srv/www"],
        "User": "nobody",
        "ExposedPorts": {"80/tcp": {}},
    }


NGINX_CONF = """# As the Docker library image runs it: master as root, workers as an unprivileged user,
# logs to the container's stdout/stderr, temporary files under /tmp.
user nobody nogroup;
worker_processes 1;
pid /run/nginx.pid;
error_log /dev/stderr notice;
events { worker_connections 256; }
http {
    include /etc/nginx/mime.types;
    access_log /dev/stdout;
    client_body_temp_path /tmp/nginx-body;
    proxy_temp_path /tmp/nginx-proxy;
    fastcgi_temp_path /tmp/nginx-fastcgi;
    uwsgi_temp_path /tmp/nginx-uwsgi;
    scgi_temp_path /tmp/nginx-scgi;
    server {
        listen 80;
        root /usr/share/nginx/html;
    }
}
"""


def nginx(ctx: Ctx) -> dict:
    ctx.install(["nginx", "nginx-common"], ["/usr/sbin/nginx", "/etc/nginx/mime.types"])
    ctx.write("etc/nginx/nginx.conf", NGINX_CONF)
    ctx.write("usr/share/nginx/html/index.html", "<h1>Welcome to nginx (Debian's, on shoal)</h1>\n")
    ctx.mkdir("var/log/nginx")  # opened before the configuration is read
    return {
        "Cmd": ["/usr/sbin/nginx", "-g", "daemon off;"],
        "StopSignal": "SIGQUIT",  # graceful: finish the requests in flight
        "ExposedPorts": {"80/tcp": {}},
    }


PG = "/usr/lib/postgresql/15"
PG_UID, SSL_CERT_GID = 999, 101

PG_ENTRYPOINT = """#!/bin/sh
# As the Docker library image does, in busybox sh: a data directory on first start
# (POSTGRES_PASSWORD for the postgres user, scram over TCP), then postgres itself as
# PID 2 (the runtime's init is PID 1), so a stop's SIGINT reaches it.
set -e
export PGDATA="${PGDATA:-/var/lib/postgresql/data}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    : "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"
    pw=$(mktemp)
    printf '%s\\n' "$POSTGRES_PASSWORD" > "$pw"
    /usr/lib/postgresql/15/bin/initdb -D "$PGDATA" -U postgres --pwfile="$pw" \\
        --locale=C --encoding=UTF8 --auth-local=trust --auth-host=scram-sha-256 >/dev/null
    rm -f "$pw"
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
fi
exec /usr/lib/postgresql/15/bin/postgres -D "$PGDATA" -c listen_addresses='*' \\
    -c ssl=on -c ssl_cert_file=/etc/ssl/certs/ssl-cert-snakeoil.pem \\
    -c ssl_key_file=/etc/ssl/private/ssl-cert-snakeoil.key "$@"
"""


def snakeoil() -> tuple[str, str]:
    """Debian's snakeoil pair (ssl-cert makes it at install time, so it is not in the
    package): made once per machine with the host's openssl and kept in the cache, so
    rebuilds give the same image."""
    d = os.path.join(CACHE, "snakeoil")
    pem, key = os.path.join(d, "ssl-cert-snakeoil.pem"), os.path.join(d, "ssl-cert-snakeoil.key")
    if not os.path.exists(key):
        os.makedirs(d, exist_ok=True)
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650", "-subj", "/CN=localhost",
             "-keyout", key + ".tmp", "-out", pem],
            check=True, capture_output=True,
        )
        os.rename(key + ".tmp", key)
    return open(pem).read(), open(key).read()


def postgres(ctx: Ctx) -> dict:
    bins = [f"{PG}/bin/postgres", f"{PG}/bin/initdb"]
    # Loaded with dlopen by initdb's scripts: PL/pgSQL and the snowball dictionaries.
    libs = [f"{PG}/lib/plpgsql.so", f"{PG}/lib/dict_snowball.so"]
    ctx.install(["postgresql-15", "tzdata"], bins + libs + ["/usr/share/zoneinfo/Etc/UTC"])
    python_tree(ctx, ["postgresql-15"], "/usr/share/postgresql/15", ("man",))
    pem, key = snakeoil()
    ctx.write("etc/ssl/certs/ssl-cert-snakeoil.pem", pem)
    ctx.mkdir("etc/ssl/private", 0o710)
    ctx.write("etc/ssl/private/ssl-cert-snakeoil.key", key, 0o640)
    ctx.write("usr/local/bin/docker-entrypoint.sh", PG_ENTRYPOINT, 0o755)
    ctx.write(
        "etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\n"
        f"postgres:x:{PG_UID}:{PG_UID}:PostgreSQL administrator:/var/lib/postgresql:/bin/sh\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )
    # As Debian's postgresql-common makes it: postgres is in ssl-cert, which may read the key.
    ctx.write("etc/group", f"root:x:0:\nssl-cert:x:{SSL_CERT_GID}:postgres\npostgres:x:{PG_UID}:\nnogroup:x:65534:\n")
    ctx.mkdir("var/lib/postgresql")
    ctx.mkdir("var/run/postgresql", 0o2775)
    return {
        "Entrypoint": ["/usr/local/bin/docker-entrypoint.sh"],
        "Cmd": [],
        "User": "postgres",
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:" + PG + "/bin",
                "PGDATA=/var/lib/postgresql/data", "TZ=Etc/UTC"],
        "StopSignal": "SIGINT",
        "ExposedPorts": {"5432/tcp": {}},
        "_owners": {
            "var/lib/postgresql": (PG_UID, PG_UID),
            "var/run/postgresql": (PG_UID, PG_UID),
            "etc/ssl/private": (0, SSL_CERT_GID),
            "etc/ssl/private/ssl-cert-snakeoil.key": (0, SSL_CERT_GID),
        },
    }


IMAGES = [
    Image("demo-app-1.0", "demo/app:1.0", demo_app("1.0")),
    Image("demo-app-2.0", "demo/app:2.0", demo_app_broken("2.0")),
    Image("demo-app-3.0", "demo/app:3.0", demo_app("3.0")),
    Image("demo-app-checked", "demo/app:checked", demo_app_checked("1.0")),
    Image("redis", "redis:latest", redis),
    Image("python3", "demo/python3:3.11", python3),
    Image("nginx", "nginx:1.22", nginx),
    Image("postgres", "postgres:15", postgres, default=False),  # 61 MB, 41 s: built by its test
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
    arches = os.environ.get("SHOAL_IMAGE_ARCHES", "amd64 arm64 armhf").split()
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
        if (img.name in a.names or (not a.names and img.default))
        and (a.force or not up_to_date(os.path.join(OUT, img.name + ".tar")))
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
            owners = config.pop("_owners", None)
            base(ctx, applets)  # after the recipe: its programs win over applet links
            copyrights(ctx)
            platforms.append(
                oci.Platform(
                    sysroot.oci_arch,
                    rootfs,
                    config,
                    variant=sysroot.variant,
                    created_by=f"images/build.sh {img.name} (Debian packages: {', '.join(sorted(ctx.used))})",
                    owners=owners,
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
