"""The command line's malloc settings: accepted by glibc, harmless where they do not apply."""

import platform
import subprocess
import sys

import pytest

from cli.allocator import keep_freed_memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt settings are glibc's")
def test_glibc_accepts_every_setting():
    # each mallopt returns 1 only for a value glibc accepts: a threshold above its limit would return 0
    assert keep_freed_memory() is True


def test_python_m_anomaly_starts_through_the_tuned_entry_point():
    # `python -m anomaly` and the `anomaly` script both go through `cli.main.main`, which sets them
    out = subprocess.run(
        [sys.executable, "-c", "import runpy, cli.allocator as a; a.keep_freed_memory = lambda: print('tuned');"
         "import sys; sys.argv = ['anomaly', '--help']; runpy.run_module('anomaly', run_name='__main__')"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert out.stdout.startswith("tuned"), out.stderr
