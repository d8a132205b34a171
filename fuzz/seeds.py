#!/usr/bin/env python3
"""Writes the text, OCI and tar seeds of the fuzz corpus (the wire seeds come from
`cargo run -p shoal-proto --example fuzz_seeds -- fuzz/corpus`). Deterministic: run it
again after changing it, from the repository root: `python3 fuzz/seeds.py fuzz/corpus`."""

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile

OUT = sys.argv[1] if len(sys.argv) > 1 else "fuzz/corpus"


def write(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def sha(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tar(entries, fmt=tarfile.PAX_FORMAT):
    """entries: (name, kind, data_or_target, extra pax headers)"""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for name, kind, data, pax in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 1700000000
            info.mode = 0o755 if kind == "dir" else 0o644
            info.pax_headers = pax or {}
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                t.addfile(info)
            elif kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, data
                t.addfile(info)
            elif kind == "link":
                info.type, info.linkname = tarfile.LNKTYPE, data
                t.addfile(info)
            elif kind == "chr":
                info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
                t.addfile(info)
            else:
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    # Cut tarfile's padding to 10 KiB records: keep the entries and the two zero
    # blocks that end an archive, so seeds stay small.
    data = buf.getvalue().rstrip(b"\0")
    return data + b"\0" * (-len(data) % 512 + 1024)


def gz(data):
    return gzip.compress(data, mtime=0)


def zst(data):
    return subprocess.run(["zstd", "-q", "-c", "-3"], input=data, capture_output=True, check=True).stdout


# -- tokens
for i, t in enumerate([
    "SHOAL-1-" + "ab" * 32 + "-0123456789abcdefghijklmno",
    "  SHOAL-1-" + "0f" * 32 + "-zzzzzzzzzzzzzzzzzzzzzzzzz\n",
    "SHOAL-2-" + "ab" * 32 + "-0123456789abcdefghijklmno",
    "SWMTKN-1-abc-def",
]):
    write("token", f"seed-{i:02}", t.encode())

# -- templates
for i, t in enumerate([
    "{{.Spec.Name}} {{.ID}}",
    "{{json .UpdateStatus}}",
    '{{join .Spec.Args " "}} {{len .Spec.Args}}',
    "{{.Spec.Name | upper | lower}} {{title \"hello world\"}}",
    "a  {{- .ID -}}  b {{/* comment */}}",
    "{{.Missing.Deeper}} {{.Nothing}} {{.Spec.Labels}}",
    "{{join .Spec.Args `, `}}\n{{\"x\\\"y\"}}",
    "{{range .List}}{{.}}{{end}}",
]):
    write("template", f"seed-{i:02}", t.encode())

# -- service flags: kind byte, then NUL-separated arguments or one value
args = [
    (0, ["--name", "web", "--replicas", "3", "-p", "8000:80/tcp", "-e", "A=1", "--constraint",
         "node.labels.zone==eu", "--limit-memory", "64M", "--limit-cpu", "0.5", "--restart-delay", "5s",
         "--update-parallelism", "2", "--update-order", "start-first", "demo/app:1.0", "sh", "-c", "echo hi"]),
    (0, ["--name", "g", "--mode", "global", "-p", "mode=host,target=53,published=53,protocol=udp",
         "--update-max-failure-ratio", "0.25", "--endpoint-mode", "dnsrr", "redis"]),
    (1, ["--replicas", "5", "--env-add", "B=2", "--env-rm", "A", "--publish-rm", "8000",
         "--publish-add", "9000:90", "--constraint-add", "node.role!=manager", "web"]),
    (1, ["--rollback", "web"]),
]
for i, (kind, argv) in enumerate(args):
    write("service_args", f"seed-{i:02}", bytes([kind]) + "\0".join(argv).encode())
for i, (kind, value) in enumerate([
    (2, "8000:80/udp"), (2, "mode=host,target=80"), (3, "node.labels.zone==eu"), (3, "node.hostname!=n1"),
    (4, "64M"), (4, "1.5G"), (5, "0.25"), (6, "1m30s"), (6, "500ms"), (7, "2s"), (8, "zone=eu"), (9, "drain"),
]):
    write("service_args", f"value-{i:02}", bytes([kind]) + value.encode())

# -- layers
layer = tar([
    ("etc", "dir", None, None),
    ("etc/hostname", "file", b"board\n", None),
    ("bin", "dir", None, None),
    ("bin/ping", "file", b"\x7fELF", {"SCHILY.xattr.security.capability": "\x01\x00\x00\x02"}),
    ("bin/sh", "sym", "busybox", None),
    ("bin/busybox", "file", b"#!", None),
    ("bin/ash", "link", "bin/busybox", None),
    ("etc/.wh.old", "file", b"", None),
    ("var/.wh..wh..opq", "file", b"", None),
    ("dev/null", "chr", None, None),
])
write("unpack", "seed-tar", layer)
write("unpack", "seed-gzip", gz(layer))
write("unpack", "seed-zstd", zst(layer))
write("unpack", "seed-evil-symlink", tar([("a", "sym", "/etc", None), ("a/passwd", "file", b"x", None)]))
write("unpack", "seed-evil-dotdot", tar([("../outside", "file", b"x", None)], fmt=tarfile.GNU_FORMAT))
write("unpack", "seed-evil-hardlink", tar([("l", "link", "../../outside/sentinel", None)], fmt=tarfile.GNU_FORMAT))
write("unpack", "seed-gnu-longname", tar([("d/" + "n" * 150, "file", b"long", None)], fmt=tarfile.GNU_FORMAT))


# -- OCI JSON and archives
def image(arch, variant=None, name="demo/app:1.0", compress=gz):
    lay = tar([("hello", "file", ("hello " + arch).encode(), None)], fmt=tarfile.USTAR_FORMAT)
    blob = compress(lay) if compress else lay
    layer_type = "application/vnd.oci.image.layer.v1.tar" + ("+gzip" if compress else "")
    config = {"architecture": arch, "os": "linux", "rootfs": {"type": "layers", "diff_ids": [sha(lay)]},
              "config": {"Entrypoint": ["/hello"], "Env": ["PATH=/bin"], "WorkingDir": "/"}}
    if variant:
        config["variant"] = variant
    config_b = json.dumps(config).encode()
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(config_b),
                           "size": len(config_b)},
                "layers": [{"mediaType": layer_type, "digest": sha(blob), "size": len(blob)}]}
    manifest_b = json.dumps(manifest).encode()
    platform = {"architecture": arch, "os": "linux"}
    if variant:
        platform["variant"] = variant
    return {"blobs": [config_b, blob, manifest_b], "manifest": manifest_b, "config": config_b, "platform": platform}


def archive(images, name="demo/app:1.0", multi=True):
    blobs, descs = [], []
    for im in images:
        blobs += im["blobs"]
        descs.append({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha(im["manifest"]),
                      "size": len(im["manifest"]), "platform": im["platform"]})
    if multi:
        index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": descs}
        index_b = json.dumps(index).encode()
        blobs.append(index_b)
        top = {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": sha(index_b), "size": len(index_b)}
    else:
        top = dict(descs[0])
        del top["platform"]
    top["annotations"] = {"org.opencontainers.image.ref.name": name}
    entries = [("oci-layout", "file", b'{"imageLayoutVersion":"1.0.0"}', None), ("blobs", "dir", None, None),
               ("blobs/sha256", "dir", None, None)]
    seen = set()
    for b in blobs:
        if sha(b) not in seen:
            seen.add(sha(b))
            entries.append(("blobs/sha256/" + sha(b)[7:], "file", b, None))
    entries.append(("index.json", "file", json.dumps({"schemaVersion": 2, "manifests": [top]}).encode(), None))
    return tar(entries, fmt=tarfile.USTAR_FORMAT), index_b if multi else None


amd, arm64, armv7 = image("amd64"), image("arm64", "v8"), image("arm", "v7")
multi, index_b = archive([amd, arm64, armv7])
single, _ = archive([image("amd64", compress=None)], name="docker.io/library/redis:latest", multi=False)
for target in ("manager_archive", "agent_archive"):
    write(target, "seed-multi", multi)
    write(target, "seed-single", single)
write("manager_archive", "seed-multi-gzip", gz(multi))

write("oci", "seed-index", b"\x00" + index_b)
write("oci", "seed-top-manifest", b"\x00" + amd["manifest"])
write("oci", "seed-manifest", b"\x01" + arm64["manifest"])
write("oci", "seed-config", b"\x02" + armv7["config"])
write("oci", "seed-docker-list", b"\x00" + json.dumps({
    "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
    "manifests": [{"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "digest": sha(b"x"),
                   "size": 1, "platform": {"architecture": "arm", "os": "linux", "variant": "v6"}},
                  {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha(b"y"), "size": 1,
                   "platform": {"architecture": "unknown", "os": "unknown"}}]}).encode())
