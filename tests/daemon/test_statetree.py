"""The state tree's rules (hpod.daemon.statetree): no link below studies/ is followed, only the
owner's regular files are used, only what the daemon made is chowned.

Most run as any user (the owner is then the daemon's own user); the ones that hand files to
another uid need root and use uid 65534 (nobody) without a passwd lookup of their own.
"""

from __future__ import annotations

import os
import shutil
import stat
import threading
from pathlib import Path

import pytest

from hpod.daemon.runner import log_tail
from hpod.daemon.statetree import (
    Ids,
    UnsafePath,
    open_append,
    open_dir,
    owner_ids,
    prepare_state_dir,
    read_tail,
    remove_tree,
    replace_file,
    walk_dir,
)

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="handing files to another uid needs root")
NOBODY = Ids(65534, 65534)


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A file the daemon's user keeps to itself, outside any study folder."""
    path = tmp_path / "outside" / "secret"
    path.parent.mkdir()
    path.write_text("the secret\n")
    path.chmod(0o600)
    return path


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


# --- the top ---------------------------------------------------------------------------------


def test_prepare_state_dir_makes_it_and_studies_private(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    (state / "hpod.sqlite3").write_text("")
    (state / "hpod.sqlite3").chmod(0o644)
    studies = prepare_state_dir(state)
    assert studies == state / "studies"
    top = 0o711 if ROOT else 0o700
    assert (mode(state), mode(studies)) == (top, top)
    assert mode(state / "hpod.sqlite3") == 0o600
    prepare_state_dir(state)  # again: nothing changes
    assert mode(studies) == top


def test_prepare_state_dir_refuses_a_linked_studies_folder(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (state / "studies").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UnsafePath, match="symbolic link"):
        prepare_state_dir(state)


@needs_root
def test_prepare_state_dir_refuses_a_state_dir_of_someone_else(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, NOBODY.uid, NOBODY.gid)
    with pytest.raises(UnsafePath, match="belongs to uid 65534"):
        prepare_state_dir(state)


def test_owner_ids_is_none_for_the_daemons_own_user() -> None:
    assert owner_ids(os.geteuid()) is None
    assert owner_ids(0) is None
    if ROOT:
        ids = owner_ids(65534)
        assert ids is not None
        assert ids.uid == 65534
    else:
        assert owner_ids(os.geteuid() + 1) is None  # a user's daemon hands nothing over


# --- folders ---------------------------------------------------------------------------------


def test_open_dir_makes_the_folders_0700_and_refuses_a_link_anywhere(
    tmp_path: Path, secret: Path
) -> None:
    top = tmp_path / "studies"
    path = top / "s-1" / "trials" / "0"
    os.close(open_dir(top, path, None, create=True))
    for folder in (top / "s-1", top / "s-1" / "trials", path):
        assert mode(folder) == 0o700
    # A link at any level below the top is refused, also with create (mkdir finds it there).
    shutil.rmtree(path)
    path.symlink_to(secret.parent)
    for create in (False, True):
        with pytest.raises(UnsafePath, match="symbolic link"):
            open_dir(top, path / "checkpoint", None, create=create)
    assert not (secret.parent / "checkpoint").exists()
    # A file where a folder should be.
    path.unlink()
    path.write_text("")
    with pytest.raises(UnsafePath, match="not a folder"):
        open_dir(top, path, None, create=True)
    with pytest.raises(FileNotFoundError):
        open_dir(top, top / "s-2", None, create=False)
    with pytest.raises(ValueError, match="not a plain path"):
        open_dir(top, top / ".." / "x", None, create=True)


@needs_root
def test_open_dir_hands_what_it_made_to_the_owner_and_refuses_a_strangers(tmp_path: Path) -> None:
    top = tmp_path / "studies"
    path = top / "s-1" / "trials" / "0"
    os.close(open_dir(top, path, NOBODY, create=True))
    for folder in (top / "s-1", top / "s-1" / "trials", path):
        st = folder.stat()
        assert (st.st_uid, st.st_gid, mode(folder)) == (65534, 65534, 0o700)
    # A folder of a third uid in the owner's tree is not the owner's: refused.
    stranger = path / "checkpoint"
    stranger.mkdir()
    os.chown(stranger, 4242, 4242)
    with pytest.raises(UnsafePath, match="belongs to uid 4242"):
        open_dir(top, stranger, NOBODY, create=True)
    # A root folder with something in it, in a folder the owner can write: the owner may have
    # moved it there; it is neither used nor chowned.
    stranger.rmdir()
    planted = path / "checkpoint"
    planted.mkdir(mode=0o700)
    (planted / "root-only").write_text("x")
    with pytest.raises(UnsafePath, match="belongs to uid 0"):
        open_dir(top, planted, NOBODY, create=True)
    assert planted.stat().st_uid == 0


@needs_root
def test_open_dir_claims_an_older_hpods_root_folders_below_its_own(tmp_path: Path) -> None:
    # hpod before statetree: studies/<id>/ and trials/ root's and 0755, trial folders the
    # owner's, logs in them.
    top = tmp_path / "studies"
    trial = top / "s-1" / "trials" / "0"
    trial.mkdir(parents=True)
    for folder in (top / "s-1", top / "s-1" / "trials"):
        folder.chmod(0o755)
    os.chown(trial, NOBODY.uid, NOBODY.gid)
    (top / "s-1" / "report.json").write_text("{}")
    # A read takes them as they are and changes nothing.
    fd, trusted = walk_dir(top, top / "s-1" / "trials", NOBODY, create=False)
    os.close(fd)
    assert trusted
    assert (top / "s-1").stat().st_uid == 0
    os.close(open_dir(top, top / "s-1" / "trials", NOBODY, create=False, claim=True))
    for folder in (top / "s-1", top / "s-1" / "trials"):
        assert (folder.stat().st_uid, mode(folder)) == (65534, 0o700)
    fd, trusted = walk_dir(top, trial, NOBODY, create=False)
    os.close(fd)
    assert not trusted  # the owner's now


@needs_root
def test_trials_started_at_once_each_get_their_folder(tmp_path: Path) -> None:
    # Runs make their folders in worker threads (hpod.daemon.runner). A walk that found
    # trials/ just made by another (root's until handed over) and already holding that one's
    # trial folder refused it: a study's trials failed at random, "could not start: .../trials
    # belongs to uid 0" (tests/daemon/test_hostile_users.py, one run in three).
    top = tmp_path / "studies"
    top.mkdir(mode=0o700)
    failures: list[str] = []
    for study in range(40):
        folder = top / f"s-{study}"
        folder.mkdir(mode=0o700)
        os.chown(folder, NOBODY.uid, NOBODY.gid)  # made the owner's at submit
        barrier = threading.Barrier(6)

        def launch(trial: int, folder: Path = folder, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            try:
                path = folder / "trials" / str(trial) / "ckpt"
                os.close(open_dir(top, path, NOBODY, create=True))
            except UnsafePath as exc:
                failures.append(exc.message)

        threads = [threading.Thread(target=launch, args=(t,)) for t in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert failures == [], f"study {study}"
        for trial in range(6):
            assert (folder / "trials" / str(trial) / "ckpt").stat().st_uid == NOBODY.uid


# --- files -----------------------------------------------------------------------------------


def test_logs_that_are_links_fifos_or_folders_are_refused_and_never_touched(
    tmp_path: Path, secret: Path
) -> None:
    top = tmp_path / "studies"
    trial = top / "s-1" / "trials" / "0"
    os.close(open_dir(top, trial, None, create=True))
    log = trial / "stderr.log"
    log.symlink_to(secret)
    before = secret.stat()
    fd = os.open(trial, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(UnsafePath, match="symbolic link"):
            open_append(fd, "stderr.log", None, trial)
        with pytest.raises(UnsafePath, match="symbolic link"):
            read_tail(fd, "stderr.log", None, trial, 1024)
        with pytest.raises(UnsafePath, match="symbolic link"):
            log_tail(trial, "stderr", within=top)
        log.unlink()
        os.mkfifo(log)  # a FIFO would hang a blocking open, and a read
        with pytest.raises(UnsafePath, match=r"is a FIFO or a socket"):
            open_append(fd, "stderr.log", None, trial)
        with pytest.raises(UnsafePath, match="not a regular file"):
            log_tail(trial, "stderr", within=top)
        log.unlink()
        log.mkdir()
        with pytest.raises(UnsafePath, match="is a folder"):
            open_append(fd, "stderr.log", None, trial)
        with pytest.raises(UnsafePath, match="not a regular file"):
            log_tail(trial, "stderr", within=top)
        log.rmdir()
        # A link above the log, at the trial folder itself.
        shutil.rmtree(trial)
        trial.symlink_to(secret.parent)
        secret.rename(secret.parent / "stderr.log")
        with pytest.raises(UnsafePath, match="symbolic link"):
            log_tail(trial, "stderr", within=top)
        (secret.parent / "stderr.log").rename(secret)
    finally:
        os.close(fd)
    after = secret.stat()
    assert (after.st_uid, after.st_mode, after.st_size, after.st_mtime_ns) == (
        before.st_uid,
        before.st_mode,
        before.st_size,
        before.st_mtime_ns,
    )
    assert secret.read_text() == "the secret\n"


def test_open_append_makes_a_private_log_and_appends_to_the_owners(tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        log = os.fdopen(open_append(fd, "out.log", None, tmp_path), "ab")
        log.write(b"one\n")
        log.close()
        log = os.fdopen(open_append(fd, "out.log", None, tmp_path), "ab")
        log.write(b"two\n")
        log.close()
    finally:
        os.close(fd)
    assert (tmp_path / "out.log").read_bytes() == b"one\ntwo\n"
    assert mode(tmp_path / "out.log") == 0o600


@needs_root
def test_open_append_chowns_only_what_it_made(tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.close(open_append(fd, "made.log", NOBODY, tmp_path))
        assert (tmp_path / "made.log").stat().st_uid == 65534
        # An empty root file of one link: the daemon's, left by a crash before its chown.
        (tmp_path / "crash.log").write_bytes(b"")
        os.close(open_append(fd, "crash.log", NOBODY, tmp_path))
        assert (tmp_path / "crash.log").stat().st_uid == 65534
        # Root's file with something in it, or another link to it: not the daemon's to give.
        (tmp_path / "full.log").write_bytes(b"root's\n")
        os.link(tmp_path / "crash.log", tmp_path / "linked.log")
        os.chown(tmp_path / "crash.log", 0, 0)
        for name in ("full.log", "linked.log"):
            with pytest.raises(UnsafePath, match="belongs to uid 0"):
                open_append(fd, name, NOBODY, tmp_path)
            assert (tmp_path / name).stat().st_uid == 0
        # Nor a third user's.
        (tmp_path / "bob.log").write_bytes(b"")
        os.chown(tmp_path / "bob.log", 4242, 4242)
        with pytest.raises(UnsafePath, match="belongs to uid 4242"):
            open_append(fd, "bob.log", NOBODY, tmp_path)
        with pytest.raises(UnsafePath, match="belongs to uid 4242"):
            read_tail(fd, "bob.log", NOBODY, tmp_path, 10)
    finally:
        os.close(fd)


def test_read_tail_reads_the_end_and_says_when_it_cut(tmp_path: Path) -> None:
    (tmp_path / "x.log").write_bytes(b"0123456789")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert read_tail(fd, "x.log", None, tmp_path, 4) == (b"6789", True)
        assert read_tail(fd, "x.log", None, tmp_path, 40) == (b"0123456789", False)
        assert read_tail(fd, "none.log", None, tmp_path, 40) == (b"", False)
    finally:
        os.close(fd)


def test_replace_file_replaces_a_link_and_never_writes_through_it(
    tmp_path: Path, secret: Path
) -> None:
    folder = tmp_path / "study"
    folder.mkdir()
    (folder / "report.json").symlink_to(secret)
    (folder / ".report.json.tmp").symlink_to(secret)  # the temp name too
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        replace_file(fd, "report.json", b"{}\n", None, folder)
    finally:
        os.close(fd)
    assert secret.read_text() == "the secret\n"
    assert not (folder / "report.json").is_symlink()
    assert (folder / "report.json").read_text() == "{}\n"
    assert mode(folder / "report.json") == 0o600
    assert not os.path.lexists(folder / ".report.json.tmp")


@needs_root
def test_replace_file_gives_the_new_file_to_the_owner(tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        replace_file(fd, "report.csv", b"a\n", NOBODY, tmp_path)
    finally:
        os.close(fd)
    st = (tmp_path / "report.csv").stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (65534, 65534, 0o600)


def test_remove_tree_never_follows_a_link(tmp_path: Path, secret: Path) -> None:
    assert shutil.rmtree.avoids_symlink_attacks  # Linux: rmtree works on descriptors
    trial = tmp_path / "trial"
    ckpt = trial / "checkpoint"
    (ckpt / "sub").mkdir(parents=True)
    (ckpt / "sub" / "w.pt").write_bytes(b"w")
    (ckpt / "to-secret").symlink_to(secret)
    (ckpt / "sub" / "to-folder").symlink_to(secret.parent, target_is_directory=True)
    fd = os.open(trial, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert remove_tree(fd, "checkpoint", trial) == []
        assert not ckpt.exists()
        # The checkpoint folder itself a link: the link goes, what it points at stays.
        ckpt.symlink_to(secret.parent, target_is_directory=True)
        assert remove_tree(fd, "checkpoint", trial) == []
        assert not os.path.lexists(ckpt)
        assert remove_tree(fd, "checkpoint", trial) == []  # gone already
    finally:
        os.close(fd)
    assert secret.read_text() == "the secret\n"
