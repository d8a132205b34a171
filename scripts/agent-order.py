#!/usr/bin/env python3
"""The agent's hot code, from QEMU's log of the code it translated (scripts/agent-order.sh).

Reads the static agent QEMU boards ran, the linker's map of that build
(SHOAL_AGENT_LINK_MAP, agent/build.rs), and for each board QEMU's `-d in_asm` log and the
log offset at which the board was joined and idle. Writes the linker script agent/build.rs
links the agent with: the functions the agent ran first, those it ran while joining and
idle in any of the runs before those only a task needed, each in the order it first ran.
One run misses some of what an idle agent runs now and then (a timer, a retry), and each
function missed costs a 64 KiB window of the binary.

Only blocks whose every instruction word is the agent's own at that address count: the
board's other programs (busybox) are mapped at the same addresses.
"""

import bisect
import re
import struct
import subprocess
import sys

# An input section in lld's map: address, size, file, section name.
MAP_LINE = re.compile(r"^\s+([0-9a-f]+)\s+[0-9a-f]+\s+([0-9a-f]+)\s+\d+\s{9}(\S.*):\((\.text[^)]*)\)$")
HASH = re.compile(r"17h[0-9a-f]{16}E(\.llvm\.\d+)?$")


def segments(binary: str) -> list[tuple[int, int, int]]:
    """(start address, end address, file offset) of each loadable segment."""
    out = subprocess.run(["readelf", "-lW", binary], check=True, capture_output=True, text=True).stdout
    segs = []
    for line in out.splitlines():
        f = line.split()
        if f and f[0] == "LOAD":
            off, vaddr, filesz = int(f[1], 16), int(f[2], 16), int(f[4], 16)
            segs.append((vaddr, vaddr + filesz, off))
    return segs


def code_sections(map_file: str) -> list[tuple[int, int, str, str]]:
    """(address, size, file, section) of each code input section, by address."""
    secs = []
    with open(map_file, errors="replace") as f:
        for line in f:
            m = MAP_LINE.match(line)
            if m and int(m.group(2), 16) > 0:
                secs.append((int(m.group(1), 16), int(m.group(2), 16), m.group(3), m.group(4)))
    return sorted(secs)


def blocks(log: str):
    """(log offset, [(address, instruction word)]) of each translated block: aarch64's and
    A32's 32-bit words (Thumb's 16-bit ones end a block, and such blocks are not counted)."""
    insn = re.compile(rb"0x([0-9a-f]+):\s+([0-9a-f]{8})\s")
    block, start, pos = [], 0, 0
    with open(log, "rb") as f:
        for line in f:
            m = insn.match(line)
            if m:
                if not block:
                    start = pos
                block.append((int(m.group(1), 16), int(m.group(2), 16)))
            elif block:
                yield start, block
                block = []
            pos += len(line)
    if block:
        yield start, block


def file_pattern(path: str) -> str | None:
    """The file part of a pattern: `*` for Rust's own objects (their sections are named
    after their functions), `*ARCHIVE:MEMBER` for a C object in an archive (musl's libc.a,
    ring's C), with cargo's hashes in the names left open."""
    m = re.match(r"(.*)\((.*)\)$", path)
    if not m:
        return "*" if path.endswith(".rcgu.o") else None
    archive = re.sub(r"-[0-9a-f]{16}\.rlib$", "-*.rlib", m.group(1).rsplit("/", 1)[-1])
    member = re.sub(r"^[0-9a-f]{16}-", "*-", m.group(2))
    return f"*{archive}:{member}"


def main() -> None:
    if len(sys.argv) < 6 or len(sys.argv) % 2:
        sys.exit("usage: agent-order.py AGENT MAP OUT QEMU-LOG IDLE-OFFSET [QEMU-LOG IDLE-OFFSET…]")
    binary, map_file, out = sys.argv[1:4]
    runs = [(sys.argv[i], int(sys.argv[i + 1])) for i in range(4, len(sys.argv), 2)]
    segs = segments(binary)
    image = open(binary, "rb").read()
    secs = code_sections(map_file)
    starts = [s[0] for s in secs]

    def word(addr: int) -> int | None:
        for s, e, off in segs:
            if s <= addr <= e - 4:
                return struct.unpack_from("<I", image, off + addr - s)[0]
        return None

    def section_at(addr: int):
        i = bisect.bisect_right(starts, addr) - 1
        if i >= 0 and secs[i][0] <= addr < secs[i][0] + secs[i][1]:
            return secs[i]
        return None

    # Each section in the order first run, across the runs; idle if any run ran it idle.
    first_ran: dict[tuple, bool] = {}
    for log, idle_offset in runs:
        for offset, block in blocks(log):
            if not all(word(a) == w for a, w in block):
                continue
            for addr, _ in block:
                sec = section_at(addr)
                if sec:
                    first_ran[sec] = first_ran.get(sec, False) or offset < idle_offset
    idle = [s for s, was_idle in first_ran.items() if was_idle]
    task = [s for s, was_idle in first_ran.items() if not was_idle]

    # Exact names first; they hold as long as the dependencies and the toolchain do.
    # Then the same without Rust's symbol hash and LTO's suffix, which outlive a change of
    # either (and also take the other instances of a generic function along).
    exact, loose, outlined = [], [], False
    for group in (idle, task):
        for _, _, path, name in group:
            files = file_pattern(path)
            if files is None:
                continue
            if name.startswith(".text.OUTLINED_FUNCTION_"):
                # The machine outliner's fragments are numbered anew by every build: all
                # of them (~140 KiB), right after the idle functions, which share them.
                outlined = True
                continue
            exact.append(f"{files}({name})")
            if HASH.search(name):
                loose.append(f"{files}({HASH.sub('17h*', name)})")
        if group is idle and outlined:
            exact.append("*(.text.OUTLINED_FUNCTION_*)")
    lines = list(dict.fromkeys(exact + loose))
    with open(out, "w") as f:
        f.write(
            "/* Generated by scripts/agent-order.sh: do not edit. The functions an agent ran in a\n"
            "   QEMU board, joining and idle first, then those its first task needed, each in the\n"
            "   order it first ran (agent/build.rs says why). */\nSECTIONS {\n  .text.hot : {\n"
        )
        f.write("".join(f"    {p}\n" for p in lines))
        f.write("  }\n} INSERT BEFORE .text;\n")
    kib = lambda group: sum(s[1] for s in group) / 1024
    print(
        f"agent-order: {len(runs)} runs: {len(idle)} functions ran while joining and idle ({kib(idle):.0f} KiB), "
        f"{len(task)} more for a task ({kib(task):.0f} KiB), of {len(secs)} ({kib(secs):.0f} KiB); "
        f"{len(lines)} patterns in {out}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
