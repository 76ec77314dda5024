"""Flags that several commands share, so that each means the same thing everywhere:

--study        a study: a shipped study's name or a YAML path (hpo.run reads its spec;
               every command finds the stored study named after it)
--study-name   the study's name in the storage, when it is not the study's own name
--storage      the database URL (default: $HPO_STORAGE, else sqlite:///runs/hpo.db)
"""

from __future__ import annotations

import argparse


def add_study_flags(group: argparse._ActionsContainer, *, default: str | None = None) -> None:
    where = f" (default: {default})" if default else " (default: the study run last here)"
    group.add_argument(
        "--study", default=default, help=f"a study in studies/ or a YAML path{where}"
    )
    group.add_argument(
        "--study-name", help="its name in the storage (default: the study's file name)"
    )


def add_storage_flag(group: argparse._ActionsContainer) -> None:
    group.add_argument(
        "--storage", help="database URL (default: $HPO_STORAGE or sqlite:///runs/hpo.db)"
    )
