"""The few git facts the registry needs, read with the git command line (no library needed)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import ConfigError


@dataclass(frozen=True)
class TreeEntry:
    mode: str  # "100644", "100755", "120000" (a symbolic link), "160000" (a submodule)
    sha: str


@dataclass(frozen=True)
class Commit:
    sha: str
    author: str  # "Name <email>"
    message: str


class GitRepo:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _git(self, *args: str) -> str:
        return self._git_bytes(*args).decode("utf-8", errors="replace")

    def _git_bytes(self, *args: str) -> bytes:
        try:
            done = subprocess.run(
                ["git", "-C", str(self.root), *args], capture_output=True, check=False, timeout=30
            )
        except FileNotFoundError as exc:
            raise ConfigError("git is not installed; opsgate sync registers what git holds") from exc
        if done.returncode != 0:
            output = (done.stderr or done.stdout).decode("utf-8", errors="replace").strip()
            raise ConfigError(f"git {' '.join(args[:2])} failed: {output}")
        return done.stdout

    def is_repo(self) -> bool:
        try:
            return self._git("rev-parse", "--is-inside-work-tree").strip() == "true"
        except ConfigError:
            return False

    def head(self) -> str:
        return self._git("rev-parse", "HEAD").strip()

    def has_commit(self) -> bool:
        try:
            self._git("rev-parse", "--verify", "--quiet", "HEAD^{commit}")
        except ConfigError:
            return False
        return True

    def tree_entries(self, commit: str, paths: list[str]) -> dict[str, TreeEntry]:
        """Every file (and link, and submodule) under `paths` at `commit`, by path relative to the root."""
        if not paths:
            return {}
        out = self._git_bytes("ls-tree", "-r", "-z", commit, "--", *paths)
        entries: dict[str, TreeEntry] = {}
        for record in out.split(b"\0"):
            if not record:
                continue
            meta, _, path = record.partition(b"\t")
            mode, _kind, sha = meta.decode("ascii").split(" ")
            entries[path.decode("utf-8", errors="surrogateescape")] = TreeEntry(mode, sha)
        return entries

    def blob(self, sha: str) -> bytes:
        return self._git_bytes("cat-file", "blob", sha)

    def dirty_paths(self, paths: list[str]) -> list[str]:
        """Files under `paths` with uncommitted changes (modified, staged, untracked, deleted or renamed),
        relative to this directory (git reports them relative to the repository's top)."""
        if not paths:
            return []
        prefix = self._git("rev-parse", "--show-prefix").strip()
        out = self._git_bytes("status", "--porcelain=v1", "-z", "--untracked-files=all", "--", *paths)
        records = out.split(b"\0")
        found: set[str] = set()
        i = 0
        while i < len(records):
            record = records[i]
            i += 1
            if len(record) < 4:
                continue
            found.add(record[3:].decode("utf-8", errors="surrogateescape"))
            if record[:1] in (b"R", b"C") and i < len(records):  # a rename's old path follows
                found.add(records[i].decode("utf-8", errors="surrogateescape"))
                i += 1
        return sorted(p.removeprefix(prefix) for p in found)

    def ignored_paths(self, paths: list[str]) -> list[str]:
        """Files under `paths` that git ignores (never committed, never reported as changes), relative to
        this directory."""
        if not paths:
            return []
        out = self._git_bytes("ls-files", "-z", "--others", "--ignored", "--exclude-standard", "--", *paths)
        return sorted(r.decode("utf-8", errors="surrogateescape") for r in out.split(b"\0") if r)

    def last_commit(self, path: str) -> Commit | None:
        out = self._git("log", "-1", "--format=%H%x1f%an <%ae>%x1f%B", "--", path)
        if not out.strip():
            return None
        sha, author, message = out.split("\x1f", 2)
        return Commit(sha.strip(), author.strip(), message.strip())

    def is_ancestor(self, older: str, newer: str) -> bool:
        try:
            self._git("merge-base", "--is-ancestor", older, newer)
        except ConfigError:
            return False
        return True

    def authors(self, paths: list[str], *, since: str | None, until: str) -> list[str]:
        """Everyone (author, committer and `Co-authored-by:` trailers, as `Name <email>`) who committed to any
        of `paths` after `since` up to `until`; the whole history of the paths when `since` is None or not an
        ancestor of `until` (history rewritten since)."""
        if not paths:
            return []
        span = f"{since}..{until}" if since and self.is_ancestor(since, until) else until
        # one record per commit (ended by %x1e): author, committer, and each `Co-authored-by:` trailer
        trailers = "%(trailers:key=Co-authored-by,valueonly,separator=%x1f)"
        out = self._git("log", f"--format=%an <%ae>%x1f%cn <%ce>%x1f{trailers}%x1e", span, "--", *paths)
        people: dict[str, None] = {}
        for record in out.split("\x1e"):
            for who in record.split("\x1f"):
                if who.strip():
                    people[who.strip()] = None
        return list(people)

    def user(self) -> str:
        name = self._git("config", "--default", "", "user.name").strip()
        email = self._git("config", "--default", "", "user.email").strip()
        return f"{name} <{email}>" if email else name or "unknown"
