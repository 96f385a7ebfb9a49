"""The few git facts the registry needs, read with the git command line (no library needed)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import ConfigError


@dataclass(frozen=True)
class Commit:
    sha: str
    author: str  # "Name <email>"
    message: str


class GitRepo:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _git(self, *args: str) -> str:
        try:
            done = subprocess.run(
                ["git", "-C", str(self.root), *args], capture_output=True, text=True, check=False, timeout=30
            )
        except FileNotFoundError as exc:
            raise ConfigError("git is not installed; opsgate sync registers what git holds") from exc
        if done.returncode != 0:
            raise ConfigError(
                f"git {' '.join(args[:2])} failed: {done.stderr.strip() or done.stdout.strip()}"
            )
        return done.stdout

    def is_repo(self) -> bool:
        try:
            return self._git("rev-parse", "--is-inside-work-tree").strip() == "true"
        except ConfigError:
            return False

    def head(self) -> str:
        return self._git("rev-parse", "HEAD").strip()

    def dirty_paths(self, paths: list[str]) -> list[str]:
        """Files under `paths` with uncommitted changes (modified, staged, untracked or deleted)."""
        out = self._git("status", "--porcelain=v1", "--untracked-files=all", "--", *paths)
        return sorted(line[3:].strip().strip('"') for line in out.splitlines() if line.strip())

    def last_commit(self, path: str) -> Commit | None:
        out = self._git("log", "-1", "--format=%H%x1f%an <%ae>%x1f%B", "--", path)
        if not out.strip():
            return None
        sha, author, message = out.split("\x1f", 2)
        return Commit(sha.strip(), author.strip(), message.strip())

    def user(self) -> str:
        name = self._git("config", "--default", "", "user.name").strip()
        email = self._git("config", "--default", "", "user.email").strip()
        return f"{name} <{email}>" if email else name or "unknown"
