"""One path type for local files and Cloud Storage (`gs://bucket/key`).

Every user path a command reads or writes (run directories, checkpoints, corpora, tokenizers,
data files, results) goes through `path()`: a local path stays a `pathlib.Path` (made
absolute), a `gs://` path becomes an `etils.epath.Path`, served by gcsfs (or TensorFlow's gfile
where TensorFlow is installed), as Orbax serves its own metadata; Orbax writes the arrays through
tensorstore. Both types have the same methods, so the code that uses them does not ask which.

With `STORAGE_EMULATOR_HOST=http://host:port` set (the variable Google's client libraries read),
every `gs://` access goes to that server: gcsfs and google-cloud-storage read it themselves, and
tensorstore is pointed at it here through `TENSORSTORE_GCS_HTTP_URL`, before the first access.

The first access to a bucket checks it, so that absent credentials or a missing bucket is one
line naming the path instead of a hang or a traceback from deep inside a client library.
Readers that only open local files (ArrayRecord, Hugging Face tokenizers) read a `gs://`
directory through `local_copy`, a cached download; results made on local disk reach `gs://`
through `publish`.
"""

from __future__ import annotations

import fnmatch
import glob as globlib
import logging
import os
import pathlib
import shutil
import tempfile
from typing import Sequence, Union

from etils import epath

from llm_jax.errors import UserError

SCHEME = "gs://"
EMULATOR = "STORAGE_EMULATOR_HOST"
CACHE_ENV = "LLM_JAX_CACHE"
AnyPath = Union[pathlib.Path, epath.Path]
PathLike = Union[str, os.PathLike]

_checked_buckets: set[str] = set()


def _configure_clients() -> None:
    """Before the first `gs://` access: gcsfs without its listings cache (a process that
    polls a directory another process writes, such as a checkpoint directory, would go on
    seeing the first listing), and tensorstore (Orbax's array writer) pointed at the emulator
    that the other clients find through STORAGE_EMULATOR_HOST themselves."""
    import fsspec

    for protocol in ("gs", "gcs"):
        fsspec.config.conf.setdefault(protocol, {})["use_listings_cache"] = False
    host = os.environ.get(EMULATOR)
    if host:
        os.environ.setdefault("TENSORSTORE_GCS_HTTP_URL",
                              host if "://" in host else f"http://{host}")
        # gcsfs asks the control API for each bucket's layout and warns, per bucket, that an
        # emulator gives it no credentials; the answer does not change how paths behave.
        logging.getLogger("gcsfs").setLevel(logging.ERROR)


def is_remote(value: PathLike | AnyPath) -> bool:
    return str(value).startswith(SCHEME)


def bucket_of(value: PathLike | AnyPath) -> str:
    return str(value)[len(SCHEME):].split("/", 1)[0]


def path(value: PathLike | AnyPath) -> AnyPath:
    """`value` as a path object: absolute local `pathlib.Path`, or a checked `gs://` path."""
    text = os.fspath(value)
    if is_remote(text):
        check_bucket(text)
        return epath.Path(text)
    if "://" in text:
        raise UserError(f"{text}: only local paths and gs:// paths are supported")
    return pathlib.Path(text).expanduser().absolute()


def _credentials_missing() -> str | None:
    if os.environ.get(EMULATOR):
        return None
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    try:
        google.auth.default()
    except DefaultCredentialsError:
        return ("no Google Cloud credentials were found: on a TPU VM the VM's service account "
                "provides them; elsewhere run `gcloud auth application-default login` or set "
                "GOOGLE_APPLICATION_CREDENTIALS to a key file")
    return None


def check_bucket(value: PathLike | AnyPath) -> None:
    """Raises a one-line `UserError` naming `value` when its bucket cannot be used; each bucket
    is checked once per process."""
    bucket = bucket_of(value)
    if bucket in _checked_buckets:
        return
    if not bucket:
        raise UserError(f"{value}: a gs:// path needs a bucket name (gs://BUCKET/...)")
    if not _checked_buckets:
        _configure_clients()
    problem = _credentials_missing()
    if problem is None:
        try:
            if not epath.Path(f"{SCHEME}{bucket}").exists():
                problem = f"the bucket gs://{bucket} does not exist, or these credentials cannot see it"
        except Exception as err:  # a client library's network or permission error
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            problem = f"cannot reach Cloud Storage ({type(err).__name__}: {first})"
    if problem is not None:
        raise UserError(f"{value}: {problem}")
    _checked_buckets.add(bucket)


def cache_root() -> pathlib.Path:
    """Where `local_copy` keeps downloads: $LLM_JAX_CACHE, else ~/.cache/llm_jax."""
    return pathlib.Path(os.environ.get(CACHE_ENV) or pathlib.Path.home() / ".cache" / "llm_jax")


def _download(remote: epath.Path, local: pathlib.Path) -> None:
    """Copies one object, reusing an earlier download of the same size and time; a partial
    download is never left under the final name (several processes of a host may fetch it)."""
    stat = remote.stat()
    if local.is_file() and (local.stat().st_size, int(local.stat().st_mtime)) == (
            stat.length, int(stat.mtime)):
        return
    local.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=local.parent, prefix=f".{local.name}.")
    try:
        with os.fdopen(handle, "wb") as out, remote.open("rb") as source:
            while chunk := source.read(1 << 24):
                out.write(chunk)
        os.utime(partial, (stat.mtime, stat.mtime))
        os.replace(partial, local)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)


def files_under(directory: AnyPath) -> list[AnyPath]:
    """Every file below `directory`, sorted by path (epath's glob has no `**` on GCS)."""
    if isinstance(directory, pathlib.Path):
        return sorted((p for p in directory.rglob("*") if p.is_file()), key=str)
    files = []
    for child in directory.iterdir():
        files += files_under(child) if child.is_dir() else [child]
    return sorted(files, key=str)


def glob(pattern: str) -> list[str]:
    """The files a glob pattern matches, sorted; `**` crosses directories, local or `gs://`."""
    if not is_remote(pattern):
        return sorted(p for p in globlib.glob(pattern, recursive=True) if os.path.isfile(p))
    parts = pattern.split("/")
    first = next(i for i, part in enumerate(parts) if globlib.has_magic(part))
    root = path("/".join(parts[:first]))
    if "**" not in pattern:
        return sorted(str(p) for p in root.glob("/".join(parts[first:])) if p.is_file())
    return [str(p) for p in files_under(root) if fnmatch.fnmatchcase(str(p), pattern)]


def local_copy(value: PathLike | AnyPath) -> pathlib.Path:
    """A local path with the contents of `value`: itself when local, else a cached download of
    the file or of every file under the directory (for readers that open local files only)."""
    source = path(value)
    if isinstance(source, pathlib.Path):
        return source
    text = os.fspath(source)
    local = cache_root() / "gcs" / text[len(SCHEME):]
    if source.is_dir():
        for remote in files_under(source):
            _download(remote, local / os.fspath(remote)[len(text):].lstrip("/"))
        return local
    if not source.exists():
        raise UserError(f"{text} does not exist")
    _download(source, local)
    return local


def _copy_bytes(source: AnyPath, target: AnyPath) -> None:
    with source.open("rb") as reader, target.open("wb") as writer:
        while chunk := reader.read(1 << 24):
            writer.write(chunk)


def put_file(local_file: PathLike, target: PathLike | AnyPath) -> None:
    """Puts a finished local file at `target`: a rename on local disk, an upload to `gs://`
    (one object write, so a reader sees the whole file or none of it)."""
    target = path(target)
    if isinstance(target, pathlib.Path):
        os.replace(local_file, target)
        return
    _copy_bytes(pathlib.Path(local_file), target)
    os.unlink(local_file)


def remove_tree(target: AnyPath) -> None:
    """Deletes a directory and everything under it, local or `gs://`."""
    if isinstance(target, pathlib.Path):
        shutil.rmtree(target)
    else:
        target.rmtree()


def publish(local_dir: PathLike, destination: PathLike | AnyPath, last: Sequence[str] = (),
            exclude: Sequence[str] = ()) -> AnyPath:
    """Copies every file under `local_dir` to `destination` (keeping the layout) but those under
    the top-level names in `exclude`, the files named in `last` after all others: a reader that
    waits for those sees everything else in place."""
    local_dir = pathlib.Path(local_dir)
    target = path(destination)
    files = sorted(p for p in local_dir.rglob("*")
                   if p.is_file() and p.relative_to(local_dir).parts[0] not in exclude)
    files.sort(key=lambda p: p.relative_to(local_dir).as_posix() in last)
    for file in files:
        out = target / file.relative_to(local_dir).as_posix()
        out.parent.mkdir(parents=True, exist_ok=True)
        _copy_bytes(file, out)
    return target
