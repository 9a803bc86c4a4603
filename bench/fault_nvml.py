"""Faults injected into the real NVML: a library that stands in for libnvidia-ml.so.1.

FakeNvml (tests/fakes) replaces pynvml's Python functions; this replaces nothing in Python. It
builds a small C library named ``libnvidia-ml.so.1`` whose every function (each name pynvml can
look up) forwards to the real driver library, unless a control file says otherwise. Put its
directory first on ``LD_LIBRARY_PATH`` and pynvml loads it as it would the driver's: the real
pynvml, ctypes and return codes, the real driver's answers while nothing is injected.

The control file (``VRAMTOP_NVML_FAULTS``), read again whenever it changes, one fault a line:

    fail NAME CODE    NAME (or its _v2/_v3/WithFlags variants) returns CODE, not calling the driver
    hang NAME         NAME blocks until the line is gone, then calls the driver
    vanished          every call fails: nvmlInit with LIBRARY_NOT_FOUND, the rest UNINITIALIZED;
                      once the line is gone, calls fail UNINITIALIZED until nvmlInit succeeds
                      (a reloaded library), as FakeNvml's ``vanish``/``come_back`` model it

``ShimControl`` writes that file with FakeNvml's attributes (``fail``, ``hang_in``, ``release``,
``vanish()``, ``come_back()``), so bench/nvml_faults.py runs one fault matrix against either.

    python bench/fault_nvml.py build DIR     # needs gcc; prints the library's path
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

CONTROL_ENV = "VRAMTOP_NVML_FAULTS"
REAL_ENV = "VRAMTOP_REAL_NVML"

_PRELUDE = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <pthread.h>

#define ERR_UNINITIALIZED 1
#define ERR_LIBRARY_NOT_FOUND 12
#define MAX_LINES 256

typedef long (*fn6)(long, long, long, long, long, long);
static void *real;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct timespec seen_mtime;
static off_t seen_size = -1;
static ino_t seen_inode;
static char lines[MAX_LINES][160];
static int n_lines, vanished, needs_init;

/* Re-read the control file when its size or time changed (a stat per call: cheap next to NVML). */
static void reload(void) {
    const char *path = getenv("VRAMTOP_NVML_FAULTS");
    struct stat st;
    if (!path || stat(path, &st) != 0) {
        st.st_size = 0; st.st_ino = 0; st.st_mtim.tv_sec = st.st_mtim.tv_nsec = 0;
    }
    pthread_mutex_lock(&lock);
    /* The file is replaced, never rewritten: a new inode says it changed. */
    if (st.st_ino != seen_inode || st.st_size != seen_size || st.st_mtim.tv_sec != seen_mtime.tv_sec
            || st.st_mtim.tv_nsec != seen_mtime.tv_nsec) {
        seen_inode = st.st_ino; seen_size = st.st_size; seen_mtime = st.st_mtim;
        int was_vanished = vanished;
        n_lines = 0; vanished = 0;
        FILE *f = path ? fopen(path, "r") : NULL;
        if (f) {
            while (n_lines < MAX_LINES && fgets(lines[n_lines], sizeof lines[0], f)) {
                lines[n_lines][strcspn(lines[n_lines], "\n")] = 0;
                if (strcmp(lines[n_lines], "vanished") == 0) vanished = 1;
                n_lines++;
            }
            fclose(f);
        }
        if (was_vanished && !vanished) needs_init = 1;
    }
    pthread_mutex_unlock(&lock);
}

/* KEY names SYMBOL: the same, or SYMBOL is a versioned variant (nvmlInit -> nvmlInit_v2). */
static int names(const char *key, const char *symbol) {
    size_t n = strlen(key);
    if (strncmp(key, symbol, n) != 0) return 0;
    const char *rest = symbol + n;
    return !*rest || (rest[0] == '_' && rest[1] == 'v') || strcmp(rest, "WithFlags") == 0;
}

/* The fault a line sets for SYMBOL: its code, -1 for a hang, 0 for none. */
static int fault_for(const char *symbol) {
    int result = 0;
    pthread_mutex_lock(&lock);
    for (int i = 0; i < n_lines && !result; i++) {
        char verb[16], key[128];
        int code = 0;
        int got = sscanf(lines[i], "%15s %127s %d", verb, key, &code);
        if (got >= 2 && strcmp(verb, "hang") == 0 && names(key, symbol)) result = -1;
        else if (got == 3 && strcmp(verb, "fail") == 0 && names(key, symbol)) result = code;
    }
    pthread_mutex_unlock(&lock);
    return result;
}

static long gate(const char *symbol, int is_init, int passthrough) {
    if (passthrough) return 0;
    reload();
    while (fault_for(symbol) == -1) { usleep(20000); reload(); }
    if (vanished) return is_init ? ERR_LIBRARY_NOT_FOUND : ERR_UNINITIALIZED;
    int code = fault_for(symbol);
    if (code > 0) return code;
    if (needs_init && !is_init && strcmp(symbol, "nvmlShutdown") != 0) return ERR_UNINITIALIZED;
    return 0;
}

static fn6 lookup(const char *symbol) {
    if (!real) {
        const char *path = getenv("VRAMTOP_REAL_NVML");
        real = dlopen(path ? path : "", RTLD_NOW | RTLD_LOCAL);
        if (!real) { fprintf(stderr, "fault-nvml: cannot open the real library (%s)\n", dlerror()); abort(); }
    }
    return (fn6)dlsym(real, symbol);
}

/* Every forwarder passes six integer registers on: NVML's functions take handles, integers and
   pointers only, so this calls any of them (up to six arguments) with its own. */
#define FORWARD(symbol, is_init, passthrough)                                             \
    long symbol(long a, long b, long c, long d, long e, long f) {                         \
        static fn6 target;                                                                \
        long code = gate(#symbol, is_init, passthrough);                                  \
        if (code) return code;                                                            \
        if (!target) target = lookup(#symbol);                                            \
        if (!target) return 13; /* NVML_ERROR_FUNCTION_NOT_FOUND */                       \
        long result = target(a, b, c, d, e, f);                                           \
        if (is_init && result == 0) needs_init = 0;                                       \
        return result;                                                                    \
    }
"""


def nvml_function_names() -> list[str]:
    """Every function pynvml can look up in the library (from its own source)."""
    import pynvml

    source = Path(pynvml.__file__).read_text()
    return sorted(set(re.findall(r'_nvmlGetFunctionPointer\("(\w+)"\)', source)))


def c_source(names: list[str]) -> str:
    lines = [_PRELUDE]
    for name in names:
        is_init = int(name.startswith("nvmlInit"))
        # Error strings are how pynvml words a fault: never faulted themselves.
        passthrough = int(name == "nvmlErrorString")
        lines.append(f"FORWARD({name}, {is_init}, {passthrough})")
    return "\n".join(lines) + "\n"


def build(directory: Path) -> Path:
    """Compile the library into ``directory``; its path."""
    directory.mkdir(parents=True, exist_ok=True)
    source = directory / "fault_nvml.c"
    source.write_text(c_source(nvml_function_names()))
    library = directory / "libnvidia-ml.so.1"
    # Another soname than the driver's, so dlopen of the real path is not taken for this one.
    subprocess.run(["gcc", "-O1", "-shared", "-fPIC", "-Wno-builtin-declaration-mismatch",
                    "-Wl,-soname,libvramtop-fault-nvml.so", "-o", str(library), str(source), "-ldl",
                    "-lpthread"], check=True)
    return library


def real_library() -> str | None:
    """The driver's libnvidia-ml.so.1, as the dynamic loader would find it."""
    try:
        listing = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, check=False).stdout
    except OSError:
        listing = ""
    found = [line for line in listing.splitlines() if line.strip().startswith("libnvidia-ml.so.1 ") and "=>" in line]
    # The machine's own word size first (ldconfig also lists 32-bit copies).
    found.sort(key=lambda line: not any(arch in line for arch in ("x86-64", "AArch64")))
    if found:
        return found[0].rsplit("=>", 1)[1].strip()
    for candidate in ("/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1", "/usr/lib64/libnvidia-ml.so.1",
                      "/usr/lib/aarch64-linux-gnu/libnvidia-ml.so.1"):
        if Path(candidate).exists():
            return candidate
    return None


def environment(shim_dir: Path, control: Path, real: str | None = None) -> dict[str, str]:
    """The environment a process needs to load the shim instead of the driver's library
    (``real``: the library it forwards to; the driver's by default)."""
    real = real or real_library()
    if real is None:
        raise RuntimeError("no libnvidia-ml.so.1 on this machine: faults into the real NVML need a driver")
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = f"{shim_dir}:{env['LD_LIBRARY_PATH']}" if env.get("LD_LIBRARY_PATH") else str(shim_dir)
    env[REAL_ENV] = real
    env[CONTROL_ENV] = str(control)
    return env


class _Watched:
    """Calls ``changed`` after every mutation (the control file follows the Python state)."""

    def _after(self, changed: Any) -> None:
        self._changed = changed


class _WatchedDict(dict, _Watched):  # type: ignore[type-arg]
    def update(self, *args: Any, **kwargs: Any) -> None:
        super().update(*args, **kwargs)
        self._changed()

    def clear(self) -> None:
        super().clear()
        self._changed()


class _WatchedSet(set, _Watched):  # type: ignore[type-arg]
    def update(self, *args: Any) -> None:
        super().update(*args)
        self._changed()

    def add(self, item: Any) -> None:
        super().add(item)
        self._changed()

    def clear(self) -> None:
        super().clear()
        self._changed()


class _Release:
    """FakeNvml's ``release`` event: set, the hung calls go on (their lines are dropped)."""

    def __init__(self, control: ShimControl) -> None:
        self._control = control
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()
        self._control.write()

    def clear(self) -> None:
        self._event.clear()
        self._control.write()

    def is_set(self) -> bool:
        return self._event.is_set()


class ShimControl:
    """FakeNvml's fault attributes, written to the shim's control file on every change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fail = _WatchedDict()
        self.fail._after(self.write)
        self.hang_in = _WatchedSet()
        self.hang_in._after(self.write)
        self.release = _Release(self)
        self.vanished = False
        self.write()

    def vanish(self) -> None:
        self.vanished = True
        self.write()

    def come_back(self) -> None:
        self.vanished = False
        self.write()

    def write(self) -> None:
        lines = [f"fail {name} {code}" for name, code in self.fail.items()]
        if not self.release.is_set():
            lines += [f"hang {name}" for name in sorted(self.hang_in)]
        if self.vanished:
            lines.append("vanished")
        # Replace, never rewrite in place: the shim must not read half a file.
        temporary = self.path.with_suffix(".new")
        temporary.write_text("".join(line + "\n" for line in lines))
        os.replace(temporary, self.path)


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "build":
        print(build(Path(argv[1])))
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
