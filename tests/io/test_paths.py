"""Lock liveness: a dead process's lock may be taken over, also when the process is an unreaped zombie."""
import os
import socket
import subprocess
import sys
import time

from gcmae.io.paths import _pid_alive, claim


def test_an_unreaped_child_holds_no_lock(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # exited, but not waited for: a zombie
            with open(f"/proc/{child.pid}/stat") as fh:
                if fh.read().rpartition(")")[2].split()[0] == "Z":
                    break
            time.sleep(0.01)
        assert not _pid_alive(child.pid)
        assert _pid_alive(os.getpid())
        lock = tmp_path / ".x.lock"
        lock.write_text(f"{child.pid} {socket.gethostname()}")  # the format claim() writes
        with claim(lock) as mine:
            assert mine  # taken over from the dead holder
    finally:
        child.wait()
