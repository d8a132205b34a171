"""Debian packages of any architecture, as raw material for image root filesystems.

Used by build.py (stdlib only). It fetches packages with `apt-get download PKG:ARCH`
against a *private* apt state (package lists, cache and an empty dpkg status under the
build cache), so the host's dpkg architectures and apt lists are never changed, and it
unpacks each package with `dpkg-deb -x` into its own directory. A `Sysroot` is the union
of the packages of one architecture; `Sysroot.install` copies programs out of it into a
root filesystem together with everything they need at run time: symlink targets, the
dynamic loader and the shared-library closure (read from the ELF headers in Python, so
no readelf/ldd is needed and foreign architectures work the same as the host's).
Libraries that are missing are found by fetching the `Depends` of the package that owns
the program needing them, which is exactly where Debian's shlibs put them.
"""

from __future__ import annotations

import glob
import os
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass, field

# Debian architecture -> OCI architecture, OCI variant, multiarch triplet, ELF e_machine.
ARCHES = {
    "amd64": ("amd64", None, "x86_64-linux-gnu", 62),
    "arm64": ("arm64", None, "aarch64-linux-gnu", 183),
    "armhf": ("arm", "v7", "arm-linux-gnueabihf", 40),
}


def log(msg: str) -> None:
    print(f"images: {msg}", file=sys.stderr, flush=True)


def host_arch() -> str:
    return subprocess.run(["dpkg", "--print-architecture"], check=True, capture_output=True, text=True).stdout.strip()


class Apt:
    """apt-get with its own lists and cache under `cache_dir`, for the given architectures."""

    def __init__(self, cache_dir: str, arches: list[str]):
        self.dir = os.path.join(cache_dir, "apt")
        self.debs = os.path.join(cache_dir, "debs")
        self.arches = arches
        self.updated = False  # updated during this run (so a failed download is final)
        self.errors: dict[tuple[str, str], str] = {}
        for d in (f"{self.dir}/lists/partial", f"{self.dir}/cache/archives/partial", self.debs):
            os.makedirs(d, exist_ok=True)
        status = os.path.join(self.dir, "status")
        if not os.path.exists(status):
            open(status, "w").close()  # an empty dpkg database: nothing counts as installed

    def _cmd(self, *args: str) -> list[str]:
        opts = [
            f"Dir::State::Lists={self.dir}/lists",
            f"Dir::State::status={self.dir}/status",
            f"Dir::Cache={self.dir}/cache",
            # Keep the parsed lists: without it every apt-get run spends ~1.5 s re-reading
            # them (Debian's docker images switch this cache off in apt.conf.d).
            "Dir::Cache::pkgcache=pkgcache.bin",
            "Dir::Cache::srcpkgcache=",
            # The private lists are ours alone; root's apt would otherwise drop privileges
            # to _apt, which may not write into the build tree.
            "APT::Sandbox::User=root",
            "Acquire::Languages=none",
        ]
        # A list option: every architecture we build for gets its Packages index.
        opts += [f"APT::Architectures::={a}" for a in self.arches]
        cmd = ["apt-get", "-q"]
        for o in opts:
            cmd += ["-o", o]
        return cmd + list(args)

    def update(self) -> None:
        log(f"apt-get update (private lists for {', '.join(self.arches)})")
        r = subprocess.run(self._cmd("update"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        # A third-party source of the host failing is not our problem as long as Debian's
        # indexes arrived; a missing package then fails clearly at download time.
        if r.returncode != 0:
            log(f"apt-get update reported problems (continuing):\n{r.stderr.strip()}")
        self.updated = True

    def cached(self, pkg: str, arch: str) -> str | None:
        hits = []
        for a in (arch, "all"):
            hits += glob.glob(os.path.join(self.debs, f"{glob.escape(pkg)}_*_{a}.deb"))
        return max(hits, key=os.path.getmtime) if hits else None

    def _download(self, pairs: list[tuple[str, str]]) -> subprocess.CompletedProcess:
        return subprocess.run(
            self._cmd("download", *(f"{p}:{a}" for p, a in pairs)), cwd=self.debs, capture_output=True, text=True
        )

    def fetch(self, wanted: list[tuple[str, str]]) -> None:
        """Download the .debs of the (package, arch) pairs that are not cached yet, in one
        apt-get run where possible."""
        missing = [(p, a) for p, a in dict.fromkeys(wanted) if not self.cached(p, a)]
        if not missing:
            return
        if not self.updated and not any("Packages" in n for n in os.listdir(f"{self.dir}/lists")):
            self.update()
        r = self._download(missing)
        if r.returncode != 0 and not self.updated:
            # Lists older than the mirror name versions it no longer has: refresh once.
            self.update()
            r = self._download(missing)
        if r.returncode != 0:
            # apt-get gives up on the whole batch for one unknown name: go one by one.
            for pair in missing:
                r = self._download([pair])
                if r.returncode != 0:
                    self.errors[pair] = r.stderr.strip()
        for p, a in missing:
            hit = self.cached(p, a)
            if hit:
                log(f"downloaded {os.path.basename(hit)}")

    def download(self, pkg: str, arch: str) -> str:
        """Path of the .deb of `pkg` for `arch`, downloading it unless already cached."""
        self.fetch([(pkg, arch)])
        hit = self.cached(pkg, arch)
        if not hit:
            raise RuntimeError(f"cannot download {pkg}:{arch}: {self.errors.get((pkg, arch), '')}")
        return hit


def _depends(deb: str) -> list[str]:
    """First alternative of each Depends/Pre-Depends entry of a .deb, names only."""
    names = []
    for fld in ("Pre-Depends", "Depends"):
        out = subprocess.run(["dpkg-deb", "-f", deb, fld], check=True, capture_output=True, text=True).stdout
        for entry in filter(None, (e.strip() for e in out.split(","))):
            name = entry.split("|")[0].split("(")[0].strip().split(":")[0]
            names.append(name)
    return names


# --- ELF: just enough to read the interpreter and DT_NEEDED of any Linux executable ---


@dataclass
class Elf:
    machine: int
    interp: str | None
    needed: list[str] = field(default_factory=list)


def read_elf(path: str) -> Elf | None:
    """The loader and needed libraries of an ELF file, or None if it is not ELF."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"\x7fELF":
        return None
    is64 = data[4] == 2
    e = "<" if data[5] == 1 else ">"
    machine = struct.unpack_from(e + "H", data, 18)[0]
    if is64:
        phoff, = struct.unpack_from(e + "Q", data, 32)
        phentsize, phnum = struct.unpack_from(e + "HH", data, 54)
    else:
        phoff, = struct.unpack_from(e + "I", data, 28)
        phentsize, phnum = struct.unpack_from(e + "HH", data, 42)
    loads, interp, dynamic = [], None, None
    for i in range(phnum):
        off = phoff + i * phentsize
        if is64:
            p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz = struct.unpack_from(e + "IIQQQQ", data, off)
        else:
            p_type, p_offset, p_vaddr, _paddr, p_filesz = struct.unpack_from(e + "IIIII", data, off)
        if p_type == 1:  # PT_LOAD
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == 2:  # PT_DYNAMIC
            dynamic = (p_offset, p_filesz)
        elif p_type == 3:  # PT_INTERP
            interp = data[p_offset : p_offset + p_filesz].rstrip(b"\0").decode()
    elf = Elf(machine, interp)
    if dynamic is None:
        return elf  # static
    fmt, size = (e + "qQ", 16) if is64 else (e + "iI", 8)
    needed_offsets, strtab = [], None
    for off in range(dynamic[0], dynamic[0] + dynamic[1], size):
        tag, val = struct.unpack_from(fmt, data, off)
        if tag == 0:  # DT_NULL
            break
        if tag == 1:  # DT_NEEDED
            needed_offsets.append(val)
        elif tag == 5:  # DT_STRTAB, a virtual address: map it to the file through PT_LOAD
            strtab = next(val - va + fo for va, fo, sz in loads if va <= val < va + sz)
    for o in needed_offsets:
        end = data.index(b"\0", strtab + o)
        elf.needed.append(data[strtab + o : end].decode())
    return elf


class Sysroot:
    """The union of the Debian packages of one architecture, each unpacked on its own."""

    def __init__(self, apt: Apt, arch: str, cache_dir: str):
        self.apt, self.arch = apt, arch
        self.oci_arch, self.variant, self.triplet, self.machine = ARCHES[arch]
        self.root = os.path.join(cache_dir, "pkgs", arch)
        self.pkgs: dict[str, str] = {}  # package name -> unpacked directory
        self.debs: dict[str, str] = {}  # package name -> .deb
        self.tried_deps: set[str] = set()

    def add_many(self, pkgs: list[str]) -> None:
        """Fetch several packages in one go, then unpack them (errors surface in add)."""
        self.apt.fetch([(p, self.arch) for p in pkgs if p not in self.pkgs])
        for p in pkgs:
            self.add(p)

    def add(self, pkg: str) -> str:
        if pkg in self.pkgs:
            return self.pkgs[pkg]
        deb = self.apt.download(pkg, self.arch)
        dest = os.path.join(self.root, os.path.basename(deb)[: -len(".deb")])
        if not os.path.isdir(dest):
            # Unpack aside and rename, so an interrupted build never leaves half a package.
            tmp = dest + ".tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
            subprocess.run(["dpkg-deb", "-x", deb, tmp], check=True)
            os.rename(tmp, dest)
        self.pkgs[pkg], self.debs[pkg] = dest, deb
        return dest

    def lookup(self, path: str) -> tuple[str, str] | None:
        """(package, host path) of an absolute image path, as a symlink itself (not followed)."""
        rel = path.strip("/")
        for pkg, d in self.pkgs.items():
            host = os.path.join(d, rel)
            if os.path.lexists(host):
                parent = os.path.dirname(host)
                if os.path.realpath(parent) != os.path.join(os.path.realpath(d), os.path.dirname(rel)).rstrip("/"):
                    # Bookworm library packages ship no directory symlinks; say so if one does.
                    raise RuntimeError(f"{path} in {pkg} sits under a directory symlink; not supported")
                return pkg, host
        return None

    def _find_lib(self, soname: str, owner: str) -> str:
        dirs = [f"/lib/{self.triplet}", f"/usr/lib/{self.triplet}", "/lib", "/usr/lib"]
        while True:
            for d in dirs:
                if self.lookup(f"{d}/{soname}"):
                    return f"{d}/{soname}"
            if owner in self.tried_deps:
                raise RuntimeError(f"{soname} ({self.arch}), needed by a program of {owner}, is in none of its Depends")
            # Debian puts the library a program needs in its package's Depends.
            self.tried_deps.add(owner)
            deps = [d for d in _depends(self.debs[owner]) if d not in self.pkgs]
            self.apt.fetch([(d, self.arch) for d in deps])
            for dep in deps:
                try:
                    self.add(dep)
                except RuntimeError as err:  # virtual or arch-less packages we do not need
                    log(f"skipping dependency {dep}:{self.arch} of {owner}: {str(err).splitlines()[0]}")

    def install(self, dest: str, paths: list[str]) -> set[str]:
        """Copy `paths` (absolute image paths) and their run-time closure into `dest`.

        Returns the packages that contributed files (for their copyright notices)."""
        todo, seen, used = list(paths), set(), set()
        while todo:
            path = os.path.normpath(todo.pop())
            if path in seen:
                continue
            seen.add(path)
            hit = self.lookup(path)
            if hit is None:
                raise RuntimeError(f"{path} ({self.arch}) is in no fetched package")
            pkg, host = hit
            used.add(pkg)
            out = os.path.join(dest, path.lstrip("/"))
            os.makedirs(os.path.dirname(out), exist_ok=True)
            if os.path.lexists(out):
                continue
            if os.path.islink(host):
                target = os.readlink(host)
                os.symlink(target, out)
                todo.append(target if target.startswith("/") else os.path.join(os.path.dirname(path), target))
                continue
            shutil.copy2(host, out)
            elf = read_elf(host)
            if elf is None:
                continue
            if elf.machine != self.machine:
                raise RuntimeError(f"{path} in {pkg}:{self.arch} is for ELF machine {elf.machine}")
            if elf.interp:
                todo.append(elf.interp)
            for soname in elf.needed:
                todo.append(self._find_lib(soname, pkg))
        return used
