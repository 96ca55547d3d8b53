"""Make the PyPI Linux torch wheel import and run on CPU without the NVIDIA wheels.

The torch wheel on PyPI for Linux x86_64 is built with CUDA and its shared libraries
have DT_NEEDED entries for libcudart, libcublas, libcudnn, libnccl, ... which come from
separate multi-GB ``nvidia-*`` / ``cuda-toolkit`` wheels.  We install torch with
``--no-deps`` and then build tiny *stub* shared libraries with the same sonames and the
same (versioned) symbols, every function returning an error code ("no CUDA device").
The dynamic linker is satisfied, ``torch.cuda.is_available()`` is False and every CPU
code path works.  Nothing from NVIDIA is downloaded or redistributed.

Usage: python training/cuda_stubs.py <site-packages>/torch/lib
Needs: gcc, binutils (nm, readelf).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

# pointer-returning functions that may be called on error paths: give them a string
STRING_FUNCS = re.compile(r"(GetErrorString|GetErrorName|GetString|ErrorString)$")


def run(cmd: list[str]) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def needed(lib: Path) -> list[str]:
    out = run(["readelf", "-d", str(lib)])
    return re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", out)


def version_needs(lib: Path) -> dict[str, str]:
    """version name -> file (soname) from the .gnu.version_r section."""
    out = run(["readelf", "-V", str(lib)])
    res: dict[str, str] = {}
    cur = None
    for line in out.splitlines():
        m = re.search(r"Version: \d+\s+File: (\S+)", line)
        if m:
            cur = m.group(1)
            continue
        m = re.search(r"Name: (\S+)\s+Flags", line)
        if m and cur:
            res[m.group(1)] = cur
    return res


def undefined(lib: Path) -> list[str]:
    out = run(["nm", "-D", "--undefined-only", str(lib)])
    return [line.split()[-1] for line in out.splitlines() if line.strip()]


def main() -> int:
    libdir = Path(sys.argv[1]).resolve()
    marker = libdir / "CUDA_STUBS.txt"
    if marker.exists():  # rebuild from scratch
        for name in marker.read_text().split():
            (libdir / name).unlink(missing_ok=True)
        marker.unlink()
    libs = sorted(libdir.glob("*.so")) + sorted(libdir.parent.glob("_C*.so"))
    present = {p.name for p in libdir.iterdir()}
    missing: set[str] = set()
    for lib in libs:
        for n in needed(lib):
            if n in present:
                continue
            # system libraries are found by the loader
            if subprocess.run(["sh", "-c", f"ldconfig -p | grep -q '{n} '"]).returncode == 0:
                continue
            missing.add(n)
    if not missing:
        print("nothing to stub")
        return 0
    versioned: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    unversioned: set[str] = set()  # soname -> version -> symbols
    for lib in libs:
        vmap = version_needs(lib)
        for sym in undefined(lib):
            if "@" in sym:
                name, ver = sym.split("@", 1)
                ver = ver.lstrip("@")
                soname = vmap.get(ver)
                if soname in missing:
                    versioned[soname][ver].add(name)
            else:
                unversioned.add(sym)
    # unversioned undefined symbols that no present library defines
    defined: set[str] = set()
    for lib in libs:
        out = run(["nm", "-D", "--defined-only", str(lib)])
        defined.update(line.split()[-1].split("@")[0] for line in out.splitlines() if line.strip())
    # only CUDA-library names; never C++ runtime (__gxx_personality_v0!) or Python C API
    free = {s for s in unversioned if s not in defined and s.startswith(("cu", "nccl", "nv"))}
    with tempfile.TemporaryDirectory() as tmp:
        for soname in sorted(missing):
            vsyms = versioned.get(soname, {})
            syms = sorted(set().union(*vsyms.values()) | free) if vsyms else sorted(free)
            src = Path(tmp) / f"{soname}.c"
            lines = ['static const char msg[] = "CUDA stub (babycryd training: no GPU)";']
            for s in syms:
                if STRING_FUNCS.search(s):
                    lines.append(f"const char *{s}(void) {{ return msg; }}")
                else:
                    lines.append(f"long {s}(void) {{ return 100; }}")  # cudaErrorNoDevice
            src.write_text("\n".join(lines) + "\n")
            cmd = ["gcc", "-shared", "-fPIC", "-O0", "-w", "-o", str(libdir / soname),
                   f"-Wl,-soname,{soname}", str(src)]
            if soname in versioned:
                vs = Path(tmp) / f"{soname}.map"
                nodes = []
                for ver, names in sorted(vsyms.items()):
                    body = " ".join(f"{n};" for n in sorted(names))
                    nodes.append(f"{ver} {{ global: {body} }};")
                # the unversioned extras go into the last node's catch-all
                nodes.append("STUB_LOCAL { global: *; };")
                vs.write_text("\n".join(nodes) + "\n")
                cmd.append(f"-Wl,--version-script={vs}")
            subprocess.run(cmd, check=True)
            print(f"stub {soname}: {len(syms)} symbols")
    marker.write_text("\n".join(sorted(missing)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
