"""Output paths from untrusted strings, and exclusive claims on outputs shared by several processes.

``safe_name`` turns a slide ID or label value into one harmless, readable file name. ``claim`` is a lock file
created atomically (hard link, else ``O_CREAT | O_EXCL``) holding ``"<pid> <host>"``: one process at a time
holds it; a lock left by a dead process on this host is taken over; a lock from another host is never taken over
(its liveness cannot be checked), so a crashed remote job's lock must be deleted by hand (the warning names it).
"""
from __future__ import annotations

import hashlib
import os
import re
import socket
import time
import unicodedata
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

MAX_NAME_BYTES = 200  # file systems allow 255; leave room for suffixes such as ".lock" or ".tmp"
_UNSAFE_CHARS = re.compile(r'[\x00-\x1f\x7f<>:"|?*]')  # control characters and what Windows forbids
_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}
UNWRITTEN_LOCK_GRACE_S = 30.0  # a lock file without an owner this old is from a process that died creating it


def _clean(part: str) -> str:
    part = _UNSAFE_CHARS.sub("_", part).strip()
    part = part.lstrip(".").rstrip(". ")  # no hidden files, no "." / "..", no trailing dots (Windows)
    if part.split(".")[0].upper() in _RESERVED:
        part = "_" + part
    while len(part.encode()) > MAX_NAME_BYTES:
        part = part[:-1]
    return part


def safe_name(s: str, default: str = "unnamed") -> str:
    """`s` as a single file name: directories stripped (the last usable component of a / or \\ path is kept),
    NUL and control characters dropped or replaced, no leading dots, at most MAX_NAME_BYTES bytes; `default`
    when nothing usable is left. Letters, digits, spaces and punctuation such as -_.() are kept as they are."""
    text = unicodedata.normalize("NFC", str(s)).replace("\x00", "")
    for part in reversed(re.split(r"[/\\]", text)):
        cleaned = _clean(part)
        if cleaned:
            return cleaned
    return default


def unique_names(paths: list[Path]) -> dict[Path, str]:
    """A distinct safe name per file: its stem, or its file name where stems collide, plus a short hash of the
    file name where even those collide (e.g. names differing only in characters that `safe_name` replaces)."""
    stems = [safe_name(p.stem) for p in paths]
    names = {p: stem if stems.count(stem) == 1 else safe_name(p.name) for p, stem in zip(paths, stems)}
    values = list(names.values())
    return {p: n if values.count(n) == 1 else f"{n}-{hashlib.sha1(p.name.encode()).hexdigest()[:8]}"
            for p, n in names.items()}


def _token() -> str:
    return f"{os.getpid()} {socket.gethostname()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    """A killed process whose parent has not reaped it (e.g. an orphaned worker under an init that does not reap)
    still answers kill(pid, 0) but holds nothing."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no procfs (macOS) or gone
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def _stale_owner(lock: Path) -> str | None:
    """The lock's content if it was left by a dead process (so it may be taken over), else None."""
    try:
        text = lock.read_text()
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return None
    parts = text.split()
    if len(parts) != 2 or not parts[0].isdigit():
        return text if age > UNWRITTEN_LOCK_GRACE_S else None  # being written now, or never will be
    pid, host = int(parts[0]), parts[1]
    if host != socket.gethostname() or pid == os.getpid():
        return None
    return None if _pid_alive(pid) else text


def _private(lock: Path, kind: str) -> Path:
    """A file beside `lock` that only this process uses while claiming or breaking it."""
    return lock.with_name(f"{lock.name}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}.{kind}")


def sweep_dead_claimers(folder: str | Path) -> None:
    """Delete the private files that processes on this host, killed mid-claim, left beside locks in `folder`.
    A job calls it once at its start (not every claim: that would list a job folder once per slide)."""
    for leftover in Path(folder).glob(".*.lock.*.*.*.*"):
        prefix, pid, _, kind = leftover.name.rsplit(".", 3)
        owner = prefix.rpartition(".lock.")[2]
        if kind in ("tmp", "stale") and owner == socket.gethostname() and pid.isdigit() and not _pid_alive(int(pid)):
            leftover.unlink(missing_ok=True)


def _break(lock: Path, stale_text: str) -> None:
    """Remove `lock` if it still holds `stale_text`: move it aside atomically, and put it back if, in between,
    another process had replaced it with a live claim."""
    aside = _private(lock, "stale")
    try:
        os.rename(lock, aside)
    except FileNotFoundError:
        return
    try:
        if aside.read_text() != stale_text:
            try:
                os.link(aside, lock)  # no-clobber restore of someone else's fresh claim
            except FileExistsError:
                pass
    finally:
        aside.unlink(missing_ok=True)


def _create_with_token(lock: Path) -> bool:
    """Create `lock` already holding this process's token (True), or False if it exists. The token is written to
    a private file first and hard-linked into place, so a process killed mid-claim never leaves an empty lock that
    others would have to wait out. File systems without hard links fall back to O_EXCL + write."""
    private = _private(lock, "tmp")
    private.write_text(_token())
    try:
        os.link(private, lock)
        return True
    except FileExistsError:
        return False
    except OSError:  # no hard links here (some network or FUSE mounts)
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            fh.write(_token())
        return True
    finally:
        private.unlink(missing_ok=True)


def try_claim(lock: str | Path) -> bool:
    """Create `lock` exclusively (True), or False if a live process holds it; stale locks are taken over."""
    lock = Path(lock)
    for _ in range(3):
        if _create_with_token(lock):
            return True
        stale = _stale_owner(lock)
        if stale is None:
            if lock.exists():
                return False
            continue  # released between our attempts: try again
        _break(lock, stale)
    return False


def release(lock: str | Path) -> None:
    """Delete `lock` if this process holds it."""
    lock = Path(lock)
    try:
        if lock.read_text() == _token():
            lock.unlink()
    except FileNotFoundError:
        pass


@contextmanager
def claim(lock: str | Path, wait_s: float = 0.0, poll_s: float = 0.05) -> Iterator[bool]:
    """Hold `lock` for the `with` block: yields True when claimed (released on exit, also on errors), False when
    another live process still holds it after waiting up to `wait_s` seconds."""
    deadline = time.monotonic() + wait_s
    held = try_claim(lock)
    while not held and time.monotonic() < deadline:
        time.sleep(poll_s)
        held = try_claim(lock)
    try:
        yield held
    finally:
        if held:
            release(lock)


def lock_owner(lock: str | Path) -> str:
    """What a lock file says about its holder, for messages."""
    try:
        pid, _, host = Path(lock).read_text().partition(" ")
    except FileNotFoundError:
        return "nobody (released)"
    return f"pid {pid} on {host}" if host else "a process still creating it"
