"""A lock file that keeps two trainings out of one bundle folder.

``RunLock("models/train.lock").acquire()`` creates the file with the owner's pid, host and start
time, or refuses (:class:`RunLockedError`) while another live process holds it. A lock left by a
killed run (its pid no longer alive on this host) is taken over with a warning. The file is created
complete in one step (written beside it, then hard-linked into place), so a reader never sees a
half-written lock.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import time
from pathlib import Path

__all__ = ["RunLock", "RunLockedError", "pid_alive"]

logger = logging.getLogger(__name__)


class RunLockedError(RuntimeError):
    """Another live process holds the lock; the message names the lock file, the pid and the host."""


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (POSIX; elsewhere assumed alive)."""
    if os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


class RunLock:
    """An exclusive lock file with the owner's pid, host and start time.

    Args:
        path: the lock file, e.g. ``models/train.lock`` (its folder is created).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.held = False

    def owner(self) -> dict | None:
        """The current lock's content (``pid``, ``host``, ``started``), ``{}`` if unreadable, None if free."""
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    def _create(self) -> bool:
        """Create the lock with our details; False if it already exists."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        }
        # not fileio.atomic_write_json: its os.replace would overwrite another process's lock; os.link
        # creates the name only if it is absent (exclusive create), with the complete content in place
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(me, fh)
            os.link(tmp, self.path)  # fails if the lock exists: create-if-absent with the content in place
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)

    def _stale(self, owner: dict) -> bool:
        """A lock of a process that is gone from this host (or of this very process)."""
        if owner.get("host") != socket.gethostname() or not isinstance(owner.get("pid"), int):
            return False
        return owner["pid"] == os.getpid() or not pid_alive(owner["pid"])

    def check_free(self) -> dict | None:
        """Refuse if a live process holds the lock, without taking it (a check before a long setup).

        Returns:
            the owner of a stale lock (``{}`` if unreadable), None if there is no lock.

        Raises:
            RunLockedError: a live process (or one on another host) holds it.
        """
        owner = self.owner()
        if owner is not None and not self._stale(owner):
            raise RunLockedError(
                f"{self.path} is held by pid {owner.get('pid', '?')} on host {owner.get('host', '?')} "
                f"(started {owner.get('started', '?')}): another training is using this bundle folder. "
                "Wait for it to finish or train into another --bundle_root; if that process is gone "
                f"(e.g. it ran on another machine), delete {self.path}."
            )
        return owner

    def acquire(self) -> RunLock:
        """Take the lock (taking over a stale one with a warning); returns ``self``.

        Raises:
            RunLockedError: a live process (or one on another host) holds it.
        """
        for _ in range(3):
            if self._create():
                self.held = True
                return self
            owner = self.check_free()
            if owner is None:  # released meanwhile
                continue
            logger.warning(
                "taking over the stale lock %s of pid %s on %s (started %s; that process is gone)",
                self.path, owner.get("pid"), owner.get("host"), owner.get("started"),
            )  # fmt: skip
            self.path.unlink(missing_ok=True)
        raise RunLockedError(f"{self.path}: could not take the lock (other processes keep taking it)")

    def release(self) -> None:
        """Remove the lock if this object holds it."""
        if self.held:
            owner = self.owner()
            if owner and owner.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False
