"""Importing localedit lets glibc keep freed memory: an image's subspaces, computed again on a thread of its own as
the pipeline's tasks run, reuse the pages of the last call instead of faulting in new ones."""

import json
import os
import platform
import subprocess
import sys

import pytest

from localedit.utils.allocator import MALLOC_ENV, keep_freed_memory

# A fresh interpreter: allocator settings are process-wide, and a thread that allocated earlier keeps its arena.
PROBE = """
import json, resource, threading
import localedit, torch
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
print(json.dumps(faults))
"""
GLIBC = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")


def _faults_after_first_call(**env: str) -> int:
    """Minor page faults of the second and third of three identical subspace calls on the bundled model, in a new
    thread (the first call grows the heap)."""
    environment = {**{k: v for k, v in os.environ.items() if k not in MALLOC_ENV}, **env}
    done = subprocess.run([sys.executable, "-c", PROBE], env=environment, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return sum(json.loads(done.stdout.splitlines()[-1])[1:])


@GLIBC
def test_repeated_subspaces_reuse_freed_memory_unless_the_environment_tunes_malloc():
    kept = _faults_after_first_call()
    glibc_defaults = _faults_after_first_call(MALLOC_ARENA_MAX="8")  # the user's own setting: left alone
    assert glibc_defaults > 5000, glibc_defaults  # measured 20,000-210,000 here: the probe sees the faults
    assert kept * 5 < glibc_defaults, (kept, glibc_defaults)  # measured 400-1,200


@pytest.mark.parametrize("name", MALLOC_ENV)
def test_keep_freed_memory_declines_when_the_environment_tunes_malloc(monkeypatch, name):
    monkeypatch.setenv(name, "1")
    assert keep_freed_memory() is False
