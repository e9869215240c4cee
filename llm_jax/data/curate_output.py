"""Which output directory `llm-jax curate` may write into, resume in, or replace.

Curate records its settings in `<out>/_work/settings.json` as soon as it takes a directory, and
that record is how it recognizes its own work later: the same settings resume the finished
tasks; other settings, or a directory without the record (someone else's files), are left as
they are unless the caller passes `force`, which replaces the directory.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from llm_jax import storage
from llm_jax.errors import UserError

WORK = "_work"
SETTINGS_FILE = "settings.json"
ELSEWHERE = "pass --force to replace it, or choose another data.curated_dir or run_dir"


def _settings_record(out: storage.AnyPath) -> storage.AnyPath:
    return out / WORK / SETTINGS_FILE


def _fingerprint(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def _recorded(out: storage.AnyPath) -> dict[str, Any] | None:
    """The record of the curation that made `out`, or None when curate did not make it."""
    path = _settings_record(out)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}  # curate's own directory, but its settings are unreadable: not the same ones
    return record if isinstance(record, dict) else {}


def _flatten(settings: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(settings, dict):
        return {prefix: settings}
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _settings_changes(before: Any, after: dict[str, Any], limit: int = 4) -> str:
    """The settings that differ, as `key: old -> new`, for a person deciding whether to replace."""
    if not isinstance(before, dict):
        return "its settings record is unreadable"
    old, new = _flatten(before), _flatten(after)
    changed = [f"{key}: {old.get(key, '(unset)')!r} -> {new.get(key, '(unset)')!r}"
               for key in sorted(old.keys() | new.keys()) if old.get(key) != new.get(key)]
    more = f", and {len(changed) - limit} more" if len(changed) > limit else ""
    return ", ".join(changed[:limit]) + more


def _contents(out: storage.AnyPath, limit: int = 3) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in out.iterdir())
    more = f", ... ({len(names)} entries)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _is_link(out: storage.AnyPath) -> bool:
    return not storage.is_remote(out) and out.is_symlink()


def _replace(out: storage.AnyPath) -> None:
    if storage.is_remote(out):
        storage.remove_tree(out)
        return
    if Path.cwd().resolve().is_relative_to(out.resolve()):
        raise UserError(f"{out} holds the current directory; curate will not replace it even with "
                        "--force. Choose another data.curated_dir or run_dir")
    if out.is_dir() and not out.is_symlink():
        shutil.rmtree(out)
    else:
        out.unlink()


def _refuse_unless_empty(out: storage.AnyPath, record: dict[str, Any] | None,
                        settings: dict[str, Any]) -> None:
    if record is not None:
        raise UserError(f"{out} holds a corpus curated with other settings "
                        f"({_settings_changes(record.get('settings'), settings)}); {ELSEWHERE}")
    if any(out.iterdir()):
        raise UserError(f"{out} exists and was not made by llm-jax curate (it holds "
                        f"{_contents(out)}); {ELSEWHERE}")


def resumes(out: storage.AnyPath, settings: dict[str, Any]) -> bool:
    """Whether `out` holds curate's own work with these `settings`."""
    record = _recorded(out) if out.is_dir() else None
    return record is not None and record.get("fingerprint") == _fingerprint(settings)


def prepare_output(out: storage.AnyPath, settings: dict[str, Any], force: bool = False) -> bool:
    """Makes `out` ready for a curation with `settings`; returns True when it resumes one.

    Without `force`, `out` must be missing, empty, or curate's own with the same settings;
    anything else raises UserError and is left untouched. With `force`, `out` is replaced.
    """
    if force:
        if out.exists() or _is_link(out):
            _replace(out)
    elif resumes(out, settings):
        return True
    elif out.is_dir():
        _refuse_unless_empty(out, _recorded(out), settings)
    elif out.exists() or _is_link(out):
        raise UserError(f"{out} exists and is not a directory; {ELSEWHERE}")
    path = _settings_record(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"fingerprint": _fingerprint(settings), "settings": settings},
                               indent=2))
    return False
