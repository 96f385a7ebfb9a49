"""Reading the files an author commits: from git at a commit, or from the working tree, never through a link.

Everything the registry or an index build reads on an author's behalf (artifact files, prompt templates,
model and reference files, index sources) goes through here, so one rule holds for all of them:

- `GitTree` reads blobs at a commit. A symbolic link (git mode 120000) or a submodule is refused, so a
  committed link to `.opsgate/admin.key` or `/proc/self/environ` is never followed.
- `WorkingTree` reads the checkout (dirty versions, a project that is not a git repository, index builds).
  The path is walked from the project directory one component at a time with `O_NOFOLLOW`, so a symbolic
  link anywhere on it is refused, even one that points inside the project (the data directory, `.env`
  and `.git` are inside it too); only a regular file is read (no FIFO, device or socket); absolute paths
  and `..` are refused before anything is opened.

`read_project_file` raises `OSError` (an `UnsafePath` for what is refused) so that callers which already
report unreadable files keep doing so; the trees raise `ConfigError` naming the file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from gateway.errors import ConfigError
from gateway.registry.git import GitRepo, TreeEntry

GIT_SYMLINK = "120000"
GIT_SUBMODULE = "160000"
GIT_REGULAR = frozenset({"100644", "100755"})
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafePath(OSError):
    """A path opsgate refuses to read: a link, not a regular file, absolute, or with `..`."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(errno.EPERM, reason, path)
        self.reason = reason


def path_parts(path: str) -> list[str]:
    """The components of a project-relative path; absolute paths, `..` and NUL are refused."""
    if not path or "\x00" in path:
        raise UnsafePath(path, "is not a usable path")
    if path.startswith("/"):
        raise UnsafePath(path, "is an absolute path; name files relative to the project")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafePath(path, "goes up with '..'; name files inside the project")
    if not parts:
        raise UnsafePath(path, "names the project directory itself, not a file")
    return parts


def normalise(path: str) -> str:
    return "/".join(path_parts(path))


def _refusal(dir_fd: int, name: str, path: str, component: str, exc: OSError) -> OSError:
    """Say precisely why opening `name` failed: a link and a non-directory look alike to open()."""
    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
        return OSError(exc.errno, exc.strerror, path)
    try:
        mode = os.lstat(name, dir_fd=dir_fd).st_mode
    except OSError:
        return OSError(exc.errno, exc.strerror, path)
    never = "opsgate reads only regular files, never through links"
    if stat.S_ISLNK(mode):
        if component == path:
            return UnsafePath(path, f"is a symbolic link; {never}")
        return UnsafePath(path, f"is reached through {component}, a symbolic link; {never}")
    return UnsafePath(path, f"{component} is not a directory")


def open_project_file(root: Path, path: str) -> int:
    """A read-only descriptor on the regular file `path` under `root`, opened without following links."""
    parts = path_parts(path)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for i, part in enumerate(parts[:-1]):
            try:
                sub = os.open(part, DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                raise _refusal(fd, part, path, "/".join(parts[: i + 1]), exc) from None
            os.close(fd)
            fd = sub
        try:
            file_fd = os.open(parts[-1], READ_FLAGS, dir_fd=fd)
        except OSError as exc:
            raise _refusal(fd, parts[-1], path, path, exc) from None
    finally:
        os.close(fd)
    mode = os.fstat(file_fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(file_fd)
        what = "a directory" if stat.S_ISDIR(mode) else "a FIFO, device or socket"
        raise UnsafePath(path, f"is {what}, not a regular file")
    os.set_blocking(file_fd, True)
    return file_fd


def read_project_file(root: Path, path: str) -> bytes:
    """The bytes of the regular file `path` under `root` (see the module docstring for what is refused)."""
    fd = open_project_file(root, path)
    with os.fdopen(fd, "rb") as handle:
        return handle.read()


# What opsgate keeps for itself inside the project: git's own files and the default data directory (its
# database, admin.key, audit key, model blobs, spool). Never a source of an author's file, whatever it says.
OPSGATE_OWN = (".git", ".opsgate")


def own_dirs(root: Path, data_dir: Path | None) -> list[str]:
    """Project-relative folders no author's file may name: `OPSGATE_OWN` and the data directory."""
    out = list(OPSGATE_OWN)
    if data_dir is not None:
        with contextlib.suppress(ValueError):  # outside the project: nothing of it can be named
            out.append(data_dir.resolve().relative_to(root.resolve()).as_posix())
    return out


def is_under(rel: str, folders: list[str]) -> bool:
    return any(rel == f or rel.startswith(f + "/") for f in folders)


def read_author_text(root: Path, file: Path, display: str) -> str:
    """The UTF-8 text of `file`, below the project directory `root`, read like every file an author commits
    (never through a link, only a regular file); `ConfigError` naming `display` otherwise."""
    rel = Path(os.path.relpath(file, root)).as_posix()
    try:
        data = read_project_file(root.resolve(), rel)
    except UnsafePath as exc:
        raise ConfigError(exc.reason, path=display) from None
    except OSError as exc:
        raise ConfigError(f"cannot read the file: {exc.strerror}", path=display) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError("the file is not valid UTF-8", path=display) from None


def is_plain_file(root: Path, path: str) -> bool:
    """True when `path` under `root` is a regular file reached through no link (nothing is read)."""
    try:
        os.close(open_project_file(root, path))
    except OSError:
        return False
    return True


class Tree(Protocol):
    """Where an artifact's files come from: git at a commit, or the working tree."""

    @property
    def label(self) -> str: ...

    def files(self, folder: str) -> list[str]:
        """Project-relative paths of the entries directly in `folder` (links included, to be refused)."""
        ...

    def read(self, path: str) -> bytes:
        """The bytes of a regular file; `ConfigError` naming the file for anything else."""
        ...


class WorkingTree:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    @property
    def label(self) -> str:
        return "the working tree"

    def files(self, folder: str) -> list[str]:
        base = normalise(folder)
        try:
            fd = open_dir(self.root, base)
        except FileNotFoundError:
            return []
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR) and _is_link_on_the_way(self.root, base):
                raise ConfigError(
                    "is a symbolic link (or lies beyond one); opsgate never follows links", path=base
                ) from None
            return []
        try:
            return sorted(f"{base}/{name}" for name in os.listdir(fd) if not _is_dir(fd, name))
        finally:
            os.close(fd)

    def read(self, path: str) -> bytes:
        try:
            return read_project_file(self.root, path)
        except UnsafePath as exc:
            raise ConfigError(exc.reason, path=path) from None
        except FileNotFoundError:
            raise ConfigError("does not exist", path=path) from None
        except OSError as exc:
            raise ConfigError(f"cannot be read: {exc.strerror}", path=path) from None


def _is_link_on_the_way(root: Path, path: str) -> bool:
    current = root
    for part in path_parts(path):
        current = current / part
        if current.is_symlink():
            return True
    return False


def _is_dir(dir_fd: int, name: str) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(name, dir_fd=dir_fd).st_mode)
    except OSError:
        return True  # gone meanwhile: not listed


def open_dir(root: Path, path: str) -> int:
    """A descriptor on directory `path` under `root`, reached through no link."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    for part in path_parts(path):
        try:
            sub = os.open(part, DIR_FLAGS, dir_fd=fd)
        finally:
            os.close(fd)
        fd = sub
    return fd


@dataclass
class GitTree:
    """The files of `folders` at `commit`, as git holds them (read with `git ls-tree` and `git cat-file`)."""

    repo: GitRepo
    commit: str
    folders: tuple[str, ...]

    def __post_init__(self) -> None:
        self._entries: dict[str, TreeEntry] = self.repo.tree_entries(self.commit, list(self.folders))

    @property
    def label(self) -> str:
        return f"git commit {self.commit[:12]}"

    def files(self, folder: str) -> list[str]:
        base = normalise(folder)
        link = self._link_on_the_way(base)
        if link is not None:
            where = "is" if link == base else f"is reached through {link},"
            raise ConfigError(
                f"{where} a symbolic link in git (mode 120000); opsgate never follows links", path=base
            )
        return sorted(p for p in self._entries if p.rpartition("/")[0] == base)

    def _link_on_the_way(self, rel: str) -> str | None:
        """The first component of `rel` (itself included) that git holds as a symbolic link."""
        parts = rel.split("/")
        for i in range(1, len(parts) + 1):
            prefix = "/".join(parts[:i])
            entry = self._entries.get(prefix)
            if entry is not None and entry.mode == GIT_SYMLINK:
                return prefix
        return None

    def read(self, path: str) -> bytes:
        try:
            rel = normalise(path)
        except UnsafePath as exc:
            raise ConfigError(exc.reason, path=path) from None
        entry = self._entries.get(rel)
        if entry is None:
            raise ConfigError(self._missing(rel), path=rel)
        if entry.mode == GIT_SYMLINK:
            raise ConfigError(
                "is a symbolic link in git (mode 120000); opsgate reads only regular files, never through"
                " links: commit the file itself",
                path=rel,
            )
        if entry.mode not in GIT_REGULAR:
            raise ConfigError(f"is not a regular file in git (mode {entry.mode})", path=rel)
        return self.repo.blob(entry.sha)

    def _missing(self, rel: str) -> str:
        link = self._link_on_the_way(rel.rpartition("/")[0]) if "/" in rel else None
        if link is not None:
            return f"is reached through {link}, a symbolic link in git; opsgate never follows links"
        return f"is not in {self.label} (commit it, or sync with --allow-dirty to register the working tree)"
