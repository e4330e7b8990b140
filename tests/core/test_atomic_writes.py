"""atomic_path, the one writer path: a full disk is one line naming the file and the free
space with nothing left behind; a killed writer's temp is removed by the next writer of the
same target on the same host, never a temp whose process still runs or another host's."""

import errno
import os
import signal
import subprocess
import sys

import h5py
import numpy as np
import pytest

from saeflow.core.errors import DiskFullError, InputError
from saeflow.core.io import _host, atomic_path, remove_stale_temps, write_json


def _enospc_os(tmp):
    raise OSError(errno.ENOSPC, "No space left on device")


def _enospc_hdf5(tmp):
    # HDF5 reports the OS error inside its own message, with no errno on the exception
    with h5py.File(tmp, "w") as f:
        f["x"] = np.zeros(10)
        raise OSError("[Errno 5] Can't write data (file write failed: time = Mon, filename = "
                      f"'{tmp}', file descriptor = 5, errno = 28, error message = 'No space "
                      "left on device', buf = 0x1, total write size = 4096)")


def _quota(tmp):
    raise OSError(errno.EDQUOT, "Disk quota exceeded")


@pytest.mark.parametrize("write", [_enospc_os, _enospc_hdf5, _quota])
def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, write):
    out = tmp_path / "acts.h5"
    with pytest.raises(DiskFullError) as err:
        with atomic_path(out) as tmp:
            tmp.write_bytes(b"partial")
            write(tmp)
    assert isinstance(err.value, InputError)  # the one exit path: one line, exit 2
    line = str(err.value)
    assert line.startswith(f"{out}: <file>: no space left on the device")
    assert f" free in {tmp_path}): nothing was written; free some space and run again" in line
    assert "\n" not in line and list(tmp_path.iterdir()) == []


def test_every_writer_goes_through_it(tmp_path, monkeypatch):
    from pathlib import Path

    monkeypatch.setattr(Path, "write_text", lambda self, text: _enospc_os(self))
    with pytest.raises(DiskFullError, match=r"out\.json: <file>: no space left"):
        write_json(tmp_path / "out.json", {"a": 1})
    assert list(tmp_path.iterdir()) == []


def test_other_errors_pass_through_and_leave_nothing(tmp_path):
    with pytest.raises(OSError, match="Permission denied"):
        with atomic_path(tmp_path / "out.h5"):
            raise OSError(errno.EACCES, "Permission denied")
    assert list(tmp_path.iterdir()) == []


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temps_of_the_target_go_live_and_foreign_ones_stay(tmp_path):
    target = tmp_path / "acts.h5"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        host = _host()
        dead = tmp_path / f".acts.h5.{host}.{_dead_pid()}.abc123_x.tmp"
        live = tmp_path / f".acts.h5.{host}.{sleeper.pid}.abc123_y.tmp"
        elsewhere = tmp_path / f".acts.h5.otherhost.{_dead_pid()}.abc123_z.tmp"
        other_target = tmp_path / f".codes.h5.{host}.{_dead_pid()}.abc123_w.tmp"
        for path in (dead, live, elsewhere, other_target):
            path.write_text("partial")
        with atomic_path(target) as tmp:
            tmp.write_text("done")
        assert not dead.exists() and target.read_text() == "done"
        assert live.exists() and elsewhere.exists() and other_target.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert remove_stale_temps(target) == [live]  # its process has gone now


WRITER = """
import sys, time
from saeflow.core.io import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_text("half")
    print(tmp, flush=True)
    time.sleep(60)
"""


def test_a_killed_writers_temp_is_removed_by_the_next_write(tmp_path):
    """SIGKILL (no cleanup runs) mid-write leaves a temp beside the output; the job's rerun
    writes the output and removes it."""
    target = tmp_path / "deep" / ("x" * 240 + ".h5")  # a long name: temps stay within NAME_MAX
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE,
                            text=True)
    temp = proc.stdout.readline().strip()
    assert os.path.exists(temp) and len(os.path.basename(temp)) <= 255
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    assert os.path.exists(temp) and not target.exists()
    with atomic_path(target) as tmp:
        tmp.write_text("whole")
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]
