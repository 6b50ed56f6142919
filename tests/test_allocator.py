"""The pipeline's processes let glibc keep freed memory: an image's subspaces, computed again on a thread of its own as
the pipeline's tasks run, reuse the pages of the last call instead of faulting in new ones. Importing localedit
alone, or a malloc setting in the environment, leaves glibc's defaults."""

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from localedit.utils.allocator import MALLOC_ENV_PREFIX, TUNABLES_ENV, malloc_tuned_by_environment

REPO = Path(__file__).resolve().parent.parent
# A fresh interpreter: allocator settings are process-wide, and a thread that allocated earlier keeps its arena.
PROBE = """
import json, resource, sys, threading
import importlib; importlib.import_module(sys.argv[1])
import torch
from localedit.core.models import load_model
from localedit.core.mining import Latent, region_subspaces
from localedit.core.regions import resolve_regions
torch.set_num_threads(1)
model = load_model()
regions = resolve_regions("eyes,mouth", model.resolution)
x_t = torch.randn(1, 3, model.resolution, model.resolution, generator=torch.Generator().manual_seed(0))
faults = []
def subspaces_three_times():
    for _ in range(3):
        before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
        region_subspaces(model, Latent(None, x_t, 500), regions, k=4)
        faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)
thread = threading.Thread(target=subspaces_three_times)
thread.start(); thread.join()
# glibc's own report: one <heap> per arena; with glibc's defaults the thread got an arena of its own
import ctypes, os, tempfile
libc = ctypes.CDLL(None)
libc.fopen.restype, libc.fopen.argtypes = ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes, libc.fclose.argtypes = [ctypes.c_int, ctypes.c_void_p], [ctypes.c_void_p]
fd, path = tempfile.mkstemp(); os.close(fd)
report = libc.fopen(path.encode(), b"w"); libc.malloc_info(0, report); libc.fclose(report)
arenas = open(path).read().count("<heap nr=")
os.unlink(path)
print(json.dumps({"faults": faults, "arenas": arenas}))
"""
GLIBC = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")


def _malloc_variables() -> list[str]:
    """The variables of this environment that tune glibc's malloc (what ``malloc_tuned_by_environment`` reads)."""
    return [name for name in os.environ if name.startswith(MALLOC_ENV_PREFIX) or name == TUNABLES_ENV]


_TUNING = set(_malloc_variables())
NO_MALLOC_ENV = {k: v for k, v in os.environ.items() if k not in _TUNING}


def _after_first_call(module: str, **env: str) -> tuple[int, int]:
    """(minor page faults of the second and third of three identical subspace calls on the bundled model, glibc
    malloc arenas after them), in a new thread of a process that first imported ``module`` (the first call grows
    the heap)."""
    done = subprocess.run([sys.executable, "-c", PROBE, module], env={**NO_MALLOC_ENV, **env}, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    probe = json.loads(done.stdout.splitlines()[-1])
    return sum(probe["faults"][1:]), probe["arenas"]


@GLIBC
def test_a_pipeline_process_reuses_freed_memory_and_a_library_import_leaves_malloc_alone():
    kept, kept_arenas = _after_first_call("tasks.runtime")
    library_only, library_arenas = _after_first_call("localedit")
    users_own, users_arenas = _after_first_call("tasks.runtime", MALLOC_ARENA_MAX="8")
    # Whether malloc was set: one arena for every thread, else the thread's own (glibc's defaults).
    assert (kept_arenas, library_arenas > 1, users_arenas > 1) == (1, True, True), (kept_arenas, library_arenas,
                                                                                   users_arenas)
    # What it is for: glibc's defaults measured 2,300-210,000 faults (its adaptive mmap threshold sometimes
    # settles, in one process of a pair at most so far), kept 400-2,000.
    control = max(library_only, users_own)
    assert control > 3000 and kept * 3 < control, (kept, library_only, users_own)


@pytest.mark.parametrize("name, value, tuned", [
    ("MALLOC_ARENA_MAX", "2", True),
    ("MALLOC_TOP_PAD_", "0", True),
    ("GLIBC_TUNABLES", "glibc.malloc.arena_max=2", True),
    ("GLIBC_TUNABLES", "glibc.cpu.hwcaps=-AVX2", False),
])
def test_any_malloc_setting_in_the_environment_counts(monkeypatch, name, value, tuned):
    for other in _malloc_variables():
        monkeypatch.delenv(other)
    monkeypatch.setenv(name, value)
    assert malloc_tuned_by_environment() is tuned
