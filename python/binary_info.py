"""Reads what a built library is for, from its own headers: ELF (Linux) and
Mach-O (macOS). Standard library only. Used by build_wheel.py to tag each
wheel from the library it carries, and by tests/hosts/test_binaries.py.

    python3 python/binary_info.py dist/attachments.so   # prints the facts as JSON
"""
import json
import struct
import sys

ELF_MACHINES = {0x3E: "x86_64", 0xB7: "aarch64", 0x03: "i686", 0x28: "arm"}
SHT_DYNAMIC, SHT_GNU_VERNEED, DT_NEEDED = 6, 0x6FFFFFFE, 1

MACHO_MAGIC_64 = 0xFEEDFACF
MACHO_CPUS = {0x01000007: "x86_64", 0x0100000C: "arm64"}
MH_DYLIB = 6
LC_SYMTAB, LC_LOAD_DYLIB, LC_ID_DYLIB = 0x2, 0xC, 0xD
LC_CODE_SIGNATURE, LC_BUILD_VERSION, LC_VERSION_MIN_MACOSX = 0x1D, 0x32, 0x24
LC_REQ_DYLD = 0x80000000
N_EXT, N_PEXT, N_TYPE, N_SECT = 0x01, 0x10, 0x0E, 0x0E


def _version_key(v):
    return tuple(int(p) for p in v.split("."))


def _cstr(data, off):
    end = data.index(b"\0", off)
    return data[off:end].decode("utf-8", "replace")


def read_elf(data):
    """Class, machine, type, NEEDED libraries and the GLIBC_x.y versions it requires."""
    if data[:4] != b"\x7fELF":
        raise ValueError("not an ELF file")
    ei_class, ei_data = data[4], data[5]
    if ei_data != 1:
        raise ValueError("big-endian ELF is not supported")
    bits = {1: 32, 2: 64}[ei_class]
    if bits == 64:
        e_type, e_machine = struct.unpack_from("<HH", data, 16)
        e_shoff, = struct.unpack_from("<Q", data, 40)
        e_shentsize, e_shnum = struct.unpack_from("<HH", data, 58)
        sh_fmt, sh_size = "<IIQQQQIIQQ", 64
        dyn_fmt, dyn_size = "<qQ", 16
    else:
        e_type, e_machine = struct.unpack_from("<HH", data, 16)
        e_shoff, = struct.unpack_from("<I", data, 32)
        e_shentsize, e_shnum = struct.unpack_from("<HH", data, 46)
        sh_fmt, sh_size = "<IIIIIIIIII", 40
        dyn_fmt, dyn_size = "<iI", 8
    sections = []
    for i in range(e_shnum):
        (name, typ, _flags, _addr, off, size, link, _info, _align, _entsize) = struct.unpack_from(
            sh_fmt, data, e_shoff + i * e_shentsize)
        sections.append((typ, off, size, link))
    needed, versions = [], set()
    for typ, off, size, link in sections:
        if typ == SHT_DYNAMIC:
            strtab = sections[link][1]
            for pos in range(off, off + size, dyn_size):
                tag, val = struct.unpack_from(dyn_fmt, data, pos)
                if tag == 0:
                    break
                if tag == DT_NEEDED:
                    needed.append(_cstr(data, strtab + val))
        elif typ == SHT_GNU_VERNEED:  # Elfxx_Verneed entries, each with Elfxx_Vernaux entries
            strtab = sections[link][1]
            pos = off
            while True:
                _ver, cnt, _file, aux, nxt = struct.unpack_from("<HHIII", data, pos)
                apos = pos + aux
                for _ in range(cnt):
                    _hash, _flags, _other, name, anext = struct.unpack_from("<IHHII", data, apos)
                    versions.add(_cstr(data, strtab + name))
                    if not anext:
                        break
                    apos += anext
                if not nxt:
                    break
                pos += nxt
    glibc = sorted((v[len("GLIBC_"):] for v in versions if v.startswith("GLIBC_") and v[6:7].isdigit()),
                   key=_version_key)
    return {
        "format": "ELF",
        "bits": bits,
        "machine": ELF_MACHINES.get(e_machine, hex(e_machine)),
        "shared_object": e_type == 3,
        "needed": needed,
        "glibc_max": glibc[-1] if glibc else None,
    }


def read_macho(data):
    """CPU, file type, linked dylibs, minimum macOS, exported entry points, code signature."""
    magic, cputype, _sub, filetype, ncmds, _sizeofcmds, _flags, _res = struct.unpack_from("<IiiIIIII", data, 0)
    if magic != MACHO_MAGIC_64:
        raise ValueError("not a 64-bit little-endian Mach-O file (fat files are not supported)")
    pos, dylibs, minos, signed, exported = 32, [], None, False, []
    for _ in range(ncmds):
        cmd, cmdsize = struct.unpack_from("<II", data, pos)
        base = cmd & ~LC_REQ_DYLD
        if base == LC_LOAD_DYLIB or cmd in (0x80000018, 0x8000001F):  # also weak and re-exported
            name_off, = struct.unpack_from("<I", data, pos + 8)
            dylibs.append(_cstr(data, pos + name_off))
        elif cmd == LC_BUILD_VERSION:
            _platform, v = struct.unpack_from("<II", data, pos + 8)
            minos = f"{v >> 16}.{(v >> 8) & 0xFF}"
        elif cmd == LC_VERSION_MIN_MACOSX:
            v, = struct.unpack_from("<I", data, pos + 8)
            minos = f"{v >> 16}.{(v >> 8) & 0xFF}"
        elif cmd == LC_CODE_SIGNATURE:
            signed = True
        elif cmd == LC_SYMTAB:
            symoff, nsyms, stroff, _strsize = struct.unpack_from("<IIII", data, pos + 8)
            for i in range(nsyms):
                strx, ntype, nsect, _desc, _value = struct.unpack_from("<IBBHQ", data, symoff + i * 16)
                if ntype & N_EXT and not ntype & N_PEXT and ntype & N_TYPE == N_SECT:
                    exported.append(_cstr(data, stroff + strx))
        pos += cmdsize
    return {
        "format": "Mach-O",
        "bits": 64,
        "machine": MACHO_CPUS.get(cputype, hex(cputype)),
        "shared_object": filetype == MH_DYLIB,
        "needed": dylibs,
        "macos_min": minos,
        "code_signature": signed,
        "exported": sorted(exported),
    }


def read(path):
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] == b"\x7fELF":
        return read_elf(data)
    return read_macho(data)


def wheel_platform_tag(info):
    """The wheel platform tag that says where this library loads."""
    if info["format"] == "ELF":
        arch = info["machine"]
        if info["glibc_max"] is None:
            return f"linux_{arch}"
        major, minor = _version_key(info["glibc_max"])[:2]
        minor = max(minor, 17) if major == 2 else minor  # manylinux starts at glibc 2.17 (manylinux2014)
        tag = f"manylinux_{major}_{minor}_{arch}"
        return f"{tag}.manylinux2014_{arch}" if (major, minor) == (2, 17) else tag
    major, minor = _version_key(info["macos_min"] or "11.0")[:2]
    return f"macosx_{major}_{minor}_{info['machine']}"


if __name__ == "__main__":
    for p in sys.argv[1:]:
        facts = read(p)
        facts["wheel_tag"] = wheel_platform_tag(facts)
        print(json.dumps({p: facts}))
