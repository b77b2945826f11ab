"""Numbered SQL migrations, one folder per backend.

A file is named ``NNN_description.sql``. Each backend applies the files it has not yet
recorded in ``schema_migrations``, in order, inside one transaction that first takes a
database-side lock (``BEGIN IMMEDIATE`` on SQLite, an advisory transaction lock on Postgres),
so several processes starting at once apply each migration exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    def statements(self) -> list[str]:
        """The file split into statements (for drivers that run one statement at a time)."""
        parts = [part.strip() for part in self.sql.split(";\n")]
        return [part for part in parts if part and not _is_comment_only(part)]


def _is_comment_only(text: str) -> bool:
    return all(line.strip().startswith("--") or not line.strip() for line in text.splitlines())


def load(backend: str) -> list[Migration]:
    """Every migration of ``backend`` ("sqlite" or "postgres"), in version order."""
    folder = resources.files(__package__).joinpath(backend)
    migrations = []
    for entry in folder.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        number, _, rest = entry.name.partition("_")
        migrations.append(Migration(int(number), rest.removesuffix(".sql"), entry.read_text()))
    migrations.sort(key=lambda m: m.version)
    return migrations
