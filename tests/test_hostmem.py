"""Host memory setting (scaling.hostmem): parsing, the allocator it reports, and that ``keep``
really stops freed blocks from being faulted in again (counted page faults, in a subprocess so
that this test process's malloc is left alone)."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from scaling import hostmem
from scaling.cli.main import app

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

# Allocates, touches and frees a 64 MiB block six times; prints the minor page faults of the
# last five rounds (the first may fault in either setting) and the allocator it reports.
FAULTS = """
import json, resource
from scaling import hostmem
allocator = hostmem.apply_host_memory_setting()
import numpy as np
faults = []
for _ in range(6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = np.empty(16 * 2**20, np.float32)
    block.fill(1.0)
    del block
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"allocator": allocator, "faults": sum(faults[1:])}))
"""


def _faults(setting: str) -> dict:
    env = {"PATH": "/usr/bin:/bin", hostmem.HOST_MEMORY_ENV: setting}
    out = subprocess.run(
        [sys.executable, "-c", FAULTS], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_setting_defaults_to_release_and_names_a_bad_value():
    assert hostmem.host_memory_setting({}) == "release"
    assert hostmem.host_memory_setting({hostmem.HOST_MEMORY_ENV: "keep"}) == "keep"
    with pytest.raises(ValueError, match=r"SCALING_HOST_MEMORY='hold'.*release, keep"):
        hostmem.host_memory_setting({hostmem.HOST_MEMORY_ENV: "hold"})


def test_a_preloaded_allocator_is_named_from_the_memory_map():
    maps = "7f00-7f10 r-xp 00000000 08:01 1 /usr/lib/x86_64-linux-gnu/libjemalloc.so.2\n"
    assert hostmem.host_allocator(maps) == "jemalloc (preloaded)"
    plain = "7f00-7f10 r-xp 00000000 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n"
    assert hostmem.host_allocator(plain) in ("glibc malloc", "system malloc")


@pytest.mark.skipif(not GLIBC, reason="the setting tunes glibc's malloc (Linux)")
def test_keep_stops_freed_blocks_from_faulting_in_again():
    release, keep = _faults("release"), _faults("keep")
    assert release["allocator"] == "glibc malloc"
    assert keep["allocator"] == "glibc malloc, freed memory kept"
    # released: each 64 MiB block is a fresh mapping (16,384 pages of 4 KiB, or 32 huge pages
    # where numpy's advice for transparent huge pages is taken); kept: the same memory again
    assert release["faults"] >= 5 * 32
    assert keep["faults"] <= release["faults"] // 10


def test_a_bad_setting_stops_train_with_one_line(monkeypatch):
    monkeypatch.setenv(hostmem.HOST_MEMORY_ENV, "hold")
    result = CliRunner().invoke(app, ["train", "--size", "tiny", "--steps", "1"])
    assert result.exit_code == 2
    assert "SCALING_HOST_MEMORY='hold'" in result.output and "Traceback" not in result.output
