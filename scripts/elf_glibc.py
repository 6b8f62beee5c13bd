#!/usr/bin/env python3
"""Which glibc symbol versions an ELF file needs, read from its version-needs section.

Lambda@Edge runs the addon on Amazon Linux (glibc 2.26 on AL2, 2.34 on AL2023); we build for
2.17 so it loads anywhere. A symbol bound to a newer `GLIBC_x.y` makes `dlopen` fail at
cold start, so scripts/package.sh and the edge end-to-end test refuse such a build:

    elf_glibc.py --max 2.17 FILE...     exit 1 naming every version over the limit
    elf_glibc.py FILE                   print the versions needed

Parses ELF64 little-endian (x86_64) directly: no binutils needed, and no guessing from
`objdump` output formats.
"""

from __future__ import annotations

import argparse
import struct
import sys

SHT_GNU_VERNEED = 0x6FFFFFFE


class ElfError(Exception):
    pass


def versions_needed(data: bytes) -> dict[str, set[str]]:
    """Map of needed library (e.g. libc.so.6) to the version names required from it."""
    if data[:4] != b"\x7fELF":
        raise ElfError("not an ELF file")
    if data[4] != 2 or data[5] != 1:
        raise ElfError("only 64-bit little-endian ELF is supported")
    (e_shoff,) = struct.unpack_from("<Q", data, 0x28)
    e_shentsize, e_shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = []
    for i in range(e_shnum):
        off = e_shoff + i * e_shentsize
        # sh_name, sh_type, sh_flags, sh_addr, sh_offset, sh_size, sh_link, sh_info
        _, sh_type, _, _, sh_offset, sh_size, sh_link, sh_info = struct.unpack_from(
            "<IIQQQQII", data, off
        )
        sections.append((sh_type, sh_offset, sh_size, sh_link, sh_info))
    needed: dict[str, set[str]] = {}
    for sh_type, sh_offset, _, sh_link, sh_info in sections:
        if sh_type != SHT_GNU_VERNEED:
            continue
        strtab = sections[sh_link][1]

        def string(at: int) -> str:
            end = data.index(b"\0", strtab + at)
            return data[strtab + at : end].decode()

        entry = sh_offset
        for _ in range(sh_info):
            # Verneed: vn_version, vn_cnt, vn_file, vn_aux, vn_next
            _, vn_cnt, vn_file, vn_aux, vn_next = struct.unpack_from("<HHIII", data, entry)
            names = needed.setdefault(string(vn_file), set())
            aux = entry + vn_aux
            for _ in range(vn_cnt):
                # Vernaux: vna_hash, vna_flags, vna_other, vna_name, vna_next
                _, _, _, vna_name, vna_next = struct.unpack_from("<IHHII", data, aux)
                names.add(string(vna_name))
                aux += vna_next
            if not vn_next:
                break
            entry += vn_next
    return needed


def glibc_version(name: str) -> tuple[int, ...] | None:
    if not name.startswith("GLIBC_"):
        return None
    try:
        return tuple(int(p) for p in name[len("GLIBC_") :].split("."))
    except ValueError:
        return None  # GLIBC_PRIVATE and the like


def too_new(needed: dict[str, set[str]], limit: tuple[int, ...]) -> list[str]:
    return sorted(
        f"{lib}: {name}"
        for lib, names in needed.items()
        for name in names
        if (v := glibc_version(name)) is not None and v > limit
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+")
    parser.add_argument("--max", help="highest allowed glibc version, e.g. 2.17")
    args = parser.parse_args()
    failed = False
    for path in args.files:
        try:
            with open(path, "rb") as f:
                needed = versions_needed(f.read())
        except (OSError, ElfError, struct.error, IndexError, ValueError) as e:
            print(f"{path}: cannot read ELF version needs: {e}", file=sys.stderr)
            return 2
        glibc = sorted(
            (v, n) for names in needed.values() for n in names if (v := glibc_version(n))
        )
        newest = glibc[-1][1] if glibc else "none"
        if args.max is None:
            print(f"{path}: newest glibc version needed: {newest}")
            for lib in sorted(needed):
                print(f"  {lib}: {' '.join(sorted(needed[lib]))}")
            continue
        limit = tuple(int(p) for p in args.max.split("."))
        over = too_new(needed, limit)
        if over:
            failed = True
            print(f"{path}: needs glibc newer than {args.max}:", file=sys.stderr)
            for line in over:
                print(f"  {line}", file=sys.stderr)
        else:
            print(f"{path}: ok, newest glibc version needed is {newest} (<= {args.max})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
