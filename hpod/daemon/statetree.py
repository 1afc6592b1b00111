"""The state tree on disk: who owns each folder and file, and how the daemon touches them.

A root daemon keeps ``state_dir`` (0711) and ``state_dir/studies`` (0711) as its own; each
``studies/<id>/`` and everything in it belongs to the study's owner (folders 0700, files 0600),
because that owner's trials write there. So below ``studies/`` every name is the owner's to
replace, by a symlink, a FIFO, a hard link or another folder, at any moment, and the daemon,
as root, never follows a path there:

- a folder is opened with ``O_DIRECTORY | O_NOFOLLOW`` relative to its parent's descriptor,
  one component at a time from a folder the daemon trusts, and ``fstat`` must say it belongs to
  the study's owner;
- a file is opened with ``O_NOFOLLOW | O_NONBLOCK`` relative to its folder's descriptor, and
  ``fstat`` must say it is a regular file of the study's owner;
- the daemon chowns (``fchown``, by descriptor) only what it made: a folder or file it just
  created, or one an older hpod made root's (a folder found root-owned below a root-owned one,
  or an empty one; an empty file). Anything else that is not the owner's is refused
  (:class:`UnsafePath`), never read, written or chowned.

A daemon that is not root (a per-user daemon) runs everything as its own user: the same checks
hold with that user as every owner, and nothing is chowned.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pwd
import shutil
import stat
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hpod.errors import PermissionDenied

__all__ = [
    "Ids",
    "UnsafePath",
    "open_append",
    "open_dir",
    "owner_ids",
    "prepare_state_dir",
    "read_tail",
    "remove_tree",
    "replace_file",
    "walk_dir",
]

DIR_MODE = 0o700
FILE_MODE = 0o600
# What a root daemon's state dir and its studies folder are: anyone may pass through to the
# folder they own, no one but root may list them.
SHARED_TOP_MODE = 0o711

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _O_CLOEXEC
# O_NONBLOCK: a FIFO put in place of a log must not hang the open; O_NOCTTY: nor a tty adopt us.
_FILE_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | _O_CLOEXEC
_DB_FILES = ("hpod.sqlite3", "hpod.sqlite3-wal", "hpod.sqlite3-shm")


class UnsafePath(PermissionDenied):
    """A path below ``studies/`` the daemon will not use: a link, not a folder or regular
    file, or not the study owner's."""


@dataclass(frozen=True)
class Ids:
    """Whom a study's folder belongs to, when that is not the daemon's own user."""

    uid: int
    gid: int


_WALKS = threading.Lock()


def owner_ids(uid: int) -> Ids | None:
    """The owner a study's files get: None (the daemon's own) unless the daemon is root and
    the study's owner is not."""
    if os.geteuid() != 0 or uid == 0:
        return None
    try:
        gid = pwd.getpwuid(uid).pw_gid
    except KeyError:
        gid = -1  # no passwd entry: the owner only, the group left as it is
    return Ids(uid, gid)


def _want(ids: Ids | None) -> int:
    return os.geteuid() if ids is None else ids.uid


def _refuse(where: Path, why: str) -> UnsafePath:
    return UnsafePath(
        f"{where} {why}; the daemon does not follow links or use files in a study's folder "
        "that are not its owner's own (remove it to let the daemon make it again)"
    )


def _link_problem(
    where: Path, exc: OSError, what: str, dir_fd: int, name: str
) -> UnsafePath | None:
    # O_DIRECTORY | O_NOFOLLOW on a link to a folder is ENOTDIR: lstat tells the two apart.
    link = exc.errno == errno.ELOOP
    if exc.errno == errno.ENOTDIR:
        try:
            link = stat.S_ISLNK(os.lstat(name, dir_fd=dir_fd).st_mode)
        except OSError:
            link = False
    if link:
        return _refuse(where, "is a symbolic link")
    if exc.errno == errno.ENOTDIR:
        return _refuse(where, f"is not a {what}")
    if exc.errno == errno.EISDIR:
        return _refuse(where, f"is a folder, not a {what}")
    if exc.errno in (errno.ENXIO, errno.EWOULDBLOCK):
        return _refuse(where, "is a FIFO or a socket, not a regular file")
    return None


# --- the daemon's own top -------------------------------------------------------------------


def prepare_state_dir(state_dir: Path) -> Path:
    """Make ``state_dir`` and ``state_dir/studies`` the daemon's own and private; the latter.

    Root: both 0711 (each owner passes through to the study folders that are theirs); any
    other user: 0700. The store's files are made 0600. A state dir or studies folder that
    belongs to someone else is refused: whoever owns it could swap what the daemon trusts.
    """
    mode = SHARED_TOP_MODE if os.geteuid() == 0 else DIR_MODE
    state_dir.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    top = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY | _O_CLOEXEC)
    try:
        _own_dir(top, state_dir, mode)
        for name in _DB_FILES:
            try:
                fd = os.open(name, os.O_RDONLY | _FILE_FLAGS, dir_fd=top)
            except FileNotFoundError:
                continue
            try:
                if stat.S_ISREG(os.fstat(fd).st_mode):
                    os.fchmod(fd, FILE_MODE)
            finally:
                os.close(fd)
        studies = state_dir / "studies"
        with contextlib.suppress(FileExistsError):
            os.mkdir("studies", DIR_MODE, dir_fd=top)
        try:
            fd = os.open("studies", _DIR_FLAGS, dir_fd=top)
        except OSError as exc:
            problem = _link_problem(studies, exc, "folder", top, "studies")
            if problem is not None:
                raise problem from None
            raise
        try:
            _own_dir(fd, studies, mode)
        finally:
            os.close(fd)
    finally:
        os.close(top)
    return studies


def _own_dir(fd: int, where: Path, mode: int) -> None:
    st = os.fstat(fd)
    if st.st_uid != os.geteuid():
        raise UnsafePath(
            f"{where} belongs to uid {st.st_uid}, not to the daemon's uid {os.geteuid()}: "
            "the daemon keeps its state only in folders of its own (chown it, or choose "
            "another state_dir)"
        )
    if stat.S_IMODE(st.st_mode) != mode:
        os.fchmod(fd, mode)


# --- folders below the top ------------------------------------------------------------------


def open_dir(
    top: Path, path: Path, ids: Ids | None, *, create: bool, claim: bool | None = None
) -> int:
    """:func:`walk_dir`'s descriptor only."""
    return walk_dir(top, path, ids, create=create, claim=claim)[0]


def walk_dir(
    top: Path, path: Path, ids: Ids | None, *, create: bool, claim: bool | None = None
) -> tuple[int, bool]:
    """A descriptor of folder ``path`` (``top`` or below it), walked without following links.

    ``top`` is the daemon's own (``studies/``, or a test's folder) and is opened as it is;
    each component below it with ``O_NOFOLLOW`` from its parent's descriptor, made 0700 first
    when ``create``. Each must be the owner's (``ids``; None: the daemon's user), or one the
    daemon made, now or as an older hpod: root's, and below root's folders only, or empty.
    With ``claim`` (default: ``create``) those are handed to the owner (fchown, 0700); a read
    takes them as they are. Raises :class:`UnsafePath`, or FileNotFoundError when a folder is
    missing and not ``create``. The caller closes the descriptor; the flag says whether no one
    but the daemon could have written in the folder (root's all the way, none writable by
    others), as it was found.
    """
    rel = path.relative_to(top).parts
    if any(part in ("", ".", "..") for part in rel):
        raise ValueError(f"{path} is not a plain path below {top}")
    if claim is None:
        claim = create
    # One walk at a time (runs make their folders in worker threads): a folder another walk
    # has just made is root's until that walk hands it over, and not empty once it has gone on
    # below it; seen in between it would be refused as someone else's.
    with _WALKS:
        return _walk(top, rel, ids, create=create, claim=claim)


def _walk(
    top: Path, rel: tuple[str, ...], ids: Ids | None, *, create: bool, claim: bool
) -> tuple[int, bool]:
    if create:
        with contextlib.suppress(FileExistsError):  # a file there: the open says so
            top.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | _O_CLOEXEC)
    trusted = True  # nobody but the daemon could have written into this folder
    adopt: list[int] = []
    try:
        where = top
        for name in rel:
            where = where / name
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, DIR_MODE, dir_fd=fd)
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                problem = _link_problem(where, exc, "folder", fd, name)
                if problem is not None:
                    raise problem from None
                raise
            os.close(fd)
            fd = child
            st = os.fstat(fd)
            want = _want(ids)
            if st.st_uid == want:
                trusted = want == os.geteuid() and trusted and not st.st_mode & 0o022
                continue
            if ids is not None and st.st_uid == os.geteuid() and (trusted or _empty(fd)):
                # The daemon's: made just now (empty), or by an older hpod below its own.
                if claim:
                    adopt.append(os.dup(fd))
                trusted = trusted and not st.st_mode & 0o022
                continue
            raise _refuse(where, f"belongs to uid {st.st_uid}, not to the study's owner {want}")
        # Only once the whole walk is open: a folder handed over earlier could have had a
        # stranger put below it before the walk got there.
        if ids is not None:
            for held in adopt:
                os.fchown(held, ids.uid, ids.gid)
                os.fchmod(held, DIR_MODE)
    except BaseException:
        os.close(fd)
        raise
    finally:
        for held in adopt:
            os.close(held)
    return fd, trusted


def _empty(fd: int) -> bool:
    return not os.listdir(fd)


# --- files in those folders -----------------------------------------------------------------


def _check_file(fd: int, where: Path, ids: Ids | None, *, created: bool) -> None:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise _refuse(where, "is not a regular file")
    want = _want(ids)
    if st.st_uid == want:
        return
    # One the daemon made (now, or a crash ago between create and chown: empty, one link).
    if (
        ids is not None
        and st.st_uid == os.geteuid()
        and (created or (st.st_size == 0 and st.st_nlink == 1))
    ):
        os.fchown(fd, ids.uid, ids.gid)
        return
    raise _refuse(where, f"belongs to uid {st.st_uid}, not to the study's owner {want}")


def open_append(dir_fd: int, name: str, ids: Ids | None, where: Path) -> int:
    """``name`` in the folder ``dir_fd`` opened for appending, made 0600 and the owner's if
    missing; a link, a FIFO, a device or someone else's file is refused."""
    path = where / name
    for _ in range(3):
        created = False
        try:
            fd = os.open(name, os.O_WRONLY | os.O_APPEND | _FILE_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            try:
                fd = os.open(
                    name,
                    os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | _FILE_FLAGS,
                    FILE_MODE,
                    dir_fd=dir_fd,
                )
            except FileExistsError:
                continue  # made meanwhile (by the trial): look again
            created = True
        except OSError as exc:
            problem = _link_problem(path, exc, "regular file", dir_fd, name)
            if problem is not None:
                raise problem from None
            raise
        try:
            _check_file(fd, path, ids, created=created)
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return fd
    raise _refuse(path, "keeps changing while the daemon opens it")


def read_tail(
    dir_fd: int, name: str, ids: Ids | None, where: Path, max_bytes: int, *, trusted: bool = False
) -> tuple[bytes, bool]:
    """The last ``max_bytes`` of ``name`` in ``dir_fd`` (b"" when it is missing), and whether
    the read started mid-file. A link, a FIFO, a device, or a file not the owner's is refused
    and never read; a root daemon's own file is read in a folder only it could write
    (``trusted``, from :func:`walk_dir`)."""
    path = where / name
    try:
        fd = os.open(name, os.O_RDONLY | _FILE_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return b"", False
    except OSError as exc:
        problem = _link_problem(path, exc, "regular file", dir_fd, name)
        if problem is not None:
            raise problem from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _refuse(path, "is not a regular file")
        if st.st_uid != _want(ids) and not (trusted and st.st_uid == os.geteuid()):
            raise _refuse(path, f"belongs to uid {st.st_uid}, not to the study's owner")
        size = os.lseek(fd, 0, os.SEEK_END)
        start = max(0, size - max_bytes)
        chunks: list[bytes] = []
        left = size - start
        os.lseek(fd, start, os.SEEK_SET)
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
    finally:
        os.close(fd)
    return data, start > 0


def replace_file(dir_fd: int, name: str, data: bytes, ids: Ids | None, where: Path) -> None:
    """Replace ``name`` in ``dir_fd`` atomically by a new 0600 file of the owner's: written to
    ``.name.tmp``, fsynced, chowned by descriptor, then renamed over (a rename replaces a link
    by that name, it never writes through it)."""
    tmp = f".{name}.tmp"
    for _ in range(3):
        try:
            fd = os.open(
                tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _FILE_FLAGS, FILE_MODE, dir_fd=dir_fd
            )
        except FileExistsError:
            # A leftover (a crash), or something the owner put there: the name goes, not what
            # it points at (unlink never follows).
            try:
                os.unlink(tmp, dir_fd=dir_fd)
            except FileNotFoundError:
                pass
            except IsADirectoryError:
                raise _refuse(where / tmp, "is a folder") from None
            continue
        break
    else:
        raise _refuse(where / tmp, "keeps coming back while the daemon writes the file")
    try:
        try:
            os.set_blocking(fd, True)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
            if ids is not None:
                os.fchown(fd, ids.uid, ids.gid)
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise


def remove_tree(dir_fd: int, name: str, where: Path) -> list[str]:
    """Delete ``name`` in ``dir_fd`` and all below it without following a link anywhere: a link
    by that name is removed itself; a folder by shutil.rmtree on descriptors (which never
    follows links on Linux: ``shutil.rmtree.avoids_symlink_attacks``). The problems met."""
    path = where / name
    if not shutil.rmtree.avoids_symlink_attacks:  # pragma: no cover - not Linux
        return [f"{path}: this platform's rmtree may follow links; not deleted"]
    try:
        st = os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return []
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=dir_fd)
        return []
    problems: list[str] = []

    def note(func: Callable[..., object], failed: str, info: object) -> None:
        problems.append(f"{failed}: {info[1] if isinstance(info, tuple) else info}")

    # Python 3.12 renamed the hook (onexc, given the exception) and deprecated onerror.
    if sys.version_info >= (3, 12):
        shutil.rmtree(name, dir_fd=dir_fd, onexc=note)
    else:
        shutil.rmtree(name, dir_fd=dir_fd, onerror=note)
    return problems
