"""Atomic outputs, and the checks that keep them away from what the user already has.

Everything is written under a temporary sibling name and renamed into place only after it
was fully written (rename is atomic within one filesystem, which a sibling guarantees), so a
killed run never leaves a file or folder that looks complete. Temporary names carry the writer's
process id (`.NAME.<pid>.<random>.tmp`), so a later run can tell the leftovers of a dead process
(SIGKILL, power loss) from the work of one still running, and removes only the former.

Before any work starts, `check_output_file` / `check_output_dir` refuse output paths that would
destroy something the script did not make: an input (resolved through symlinks and hard links), a
folder holding the user's own files, a file where a folder is expected. A folder is replaced only
when it holds the marker of the same script's earlier output and the user passed --overwrite.
"""
from __future__ import annotations

import contextlib
import fnmatch
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import orjson

from long_ctx.common.cli import UsageError

_UMASK = os.umask(0)
os.umask(_UMASK)

PathLike = str | os.PathLike


def _tmp_prefix(name: str) -> str:
    return f".{name}.{os.getpid()}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temps(path: PathLike) -> list[Path]:
    """Delete temporary copies of `path` left by processes that no longer run; returns them.

    Matches what `atomic_file`/`atomic_dir` create beside `path`: `.NAME.<pid>.<random>.tmp` and
    `.NAME.old-<pid>` (the previous folder, moved aside while it is replaced).
    """
    path = Path(path)
    parent = path.parent
    if not path.name or not parent.is_dir():
        return []
    name = re.escape(path.name)
    pattern = re.compile(rf"^\.{name}\.(?:(\d+)\.[^.]+\.tmp|old-(\d+))$")
    removed = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return []
    for entry in entries:
        m = pattern.match(entry.name)
        if not m or _pid_alive(int(m.group(1) or m.group(2))):
            continue
        stale = Path(entry.path)
        with contextlib.suppress(OSError):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(stale)
            else:
                stale.unlink()
            removed.append(stale)
    return removed


@contextlib.contextmanager
def atomic_file(path: PathLike, mode: str = "wb") -> Iterator:
    """Open a temp file beside `path`; on clean exit fsync and rename it onto `path`."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{path} is a folder; give the path of a file to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path.name), suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600; outputs are meant to be shared like any other file.
        os.chmod(tmp, 0o666 & ~_UMASK)
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temp folder beside `path`; on clean exit it replaces `path` as a whole.

    `overwrite=False` refuses an existing folder. A regular file at `path` is always refused:
    only folders are ever replaced. Callers decide beforehand (`check_output_dir`) whether an
    existing folder is theirs to replace.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{path} is a file, not a folder; choose another output folder")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; remove it or choose another output folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(path.name), suffix=".tmp", dir=path.parent))
    try:
        os.chmod(tmp, 0o777 & ~_UMASK)
        yield tmp
        if path.exists():
            # Move the old copy aside first so there is never a moment without a complete folder
            # at a name that looks finished.
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def interrupted_note(path: PathLike) -> str:
    """What a run stopped (Ctrl-C, SIGTERM) before its atomic output `path` was renamed leaves."""
    return (f"nothing was written to {path} (outputs appear only once complete; what was there before is "
            "unchanged); run the same command again")


def write_json(path: PathLike, obj) -> None:
    """Atomically write `obj` as indented JSON (numpy scalars allowed)."""
    with atomic_file(path) as fh:
        fh.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
        fh.write(b"\n")


# ---------------------------------------------------------------------------------------------
# Checks made before the work starts


def _same(a: Path, b: Path) -> bool:
    """The same file or folder, through symlinks and hard links."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def is_inside(inner: Path, outer: Path) -> bool:
    """`inner` is `outer` or lies somewhere below it (symlinks resolved)."""
    inner, outer = Path(inner).resolve(), Path(outer).resolve()
    return inner == outer or outer in inner.parents


def check_writable(folder: Path, flag: str, shown: Path | None = None) -> None:
    """Refuse a location where nothing can be written: the nearest existing folder at or above
    `folder` decides (the rest would be created under it). `shown` is the path the message names."""
    shown = shown if shown is not None else folder
    ancestor = Path(folder)
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"{flag} {shown}: {ancestor} is a file, so no folder can be made there; choose another path")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {shown}: cannot write in {ancestor} (permission denied); choose a writable location")


def _names_nothing(path: Path) -> bool:
    return str(path).strip() == "" or not path.resolve().name


def check_output_file(path: PathLike, inputs: Iterable[PathLike] = (), flag: str = "--output_file") -> Path:
    """Refuse, before any work, a file output that cannot be written or would hit an input.

    An existing file at `path` that is not an input may be replaced (the user named it);
    a folder at `path`, an input (same file through symlinks or hard links), or a location
    that cannot be written is a `UsageError` that says what to do.
    """
    p = Path(path)
    if _names_nothing(p) or str(path).endswith(os.sep):
        raise UsageError(f"{flag} {str(path)!r} names a folder, not a file; give a file name such as out/result.jsonl")
    if p.is_dir():
        raise UsageError(f"{flag} {p} is a folder; give the path of a file to write (e.g. {p / 'result.jsonl'})")
    for src in inputs:
        if src is not None and Path(src).exists() and p.exists() and _same(p, Path(src)):
            raise UsageError(f"{flag} {p} is the input {src}; writing it would destroy the input — choose another path")
    check_writable(p.parent, flag, shown=p)
    return p


def holds_marker(folder: PathLike, markers: Sequence[str] | Mapping[str, Iterable[str]]) -> bool:
    """Whether `folder` holds one of `markers`: file names, or {JSON file name: keys it must hold}.

    A bare name such as `stats.json` is weak (many tools write one); with keys, the file counts
    only if it is a JSON object holding all of them, i.e. the one this script writes.
    """
    folder = Path(folder)
    items = markers.items() if isinstance(markers, Mapping) else ((m, ()) for m in markers)
    for name, keys in items:
        f = folder / name
        if not f.is_file():
            continue
        keys = list(keys)
        if not keys:
            return True
        try:
            obj = orjson.loads(f.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            continue
        if isinstance(obj, dict) and all(k in obj for k in keys):
            return True
    return False


def check_output_dir(
    path: PathLike,
    markers: Sequence[str] | Mapping[str, Iterable[str]],
    what: str,
    inputs: Iterable[PathLike] = (),
    overwrite: bool = False,
    flag: str = "--output_dir",
    own: Sequence[str] | None = None,
) -> Path:
    """Refuse, before any work, an output folder that is not this script's to (re)place.

    Accepted: a missing or empty folder; with `overwrite`, a folder holding one of `markers`
    (the files this script writes into every output folder, e.g. `padding.json`; or a mapping
    {JSON file: keys it must hold}, see `holds_marker`), i.e. its own earlier output. Refused
    with a `UsageError` saying what to do: a regular file at `path`; a folder that is, contains
    or lies inside an input; the current folder or one above it; a non-empty folder without a
    marker (the user's files, never replaced, not even with --overwrite); an earlier output
    without `overwrite`. `what` names the output in messages (e.g. "stage-1 dataset").
    `own`, if given, lists glob patterns of every name the script writes there: an earlier
    output that also holds anything else (a file the user added) is refused too, since
    replacing the folder would delete it.
    """
    p = Path(path)
    if _names_nothing(p):
        raise UsageError(f"{flag} {str(path)!r} does not name a folder; give one such as out/{what.replace(' ', '_')}")
    if p.exists() and not p.is_dir():
        raise UsageError(f"{flag} {p} is a file, not a folder; choose a new folder name (the file is left alone)")
    for src in inputs:
        if src is None or not Path(src).exists():
            continue
        src = Path(src)
        if is_inside(src, p) or is_inside(p, src):
            rel = "is" if _same(p, src) else ("contains" if is_inside(src, p) else "lies inside")
            raise UsageError(f"{flag} {p} {rel} the input {src}; replacing it would destroy the input — "
                             "choose a folder outside it")
    if p.exists() and is_inside(Path.cwd(), p):
        raise UsageError(f"{flag} {p} is the current folder or one above it; choose a new folder for the output")
    if p.is_dir():
        entries = [e.name for e in os.scandir(p)]
        if entries:
            if not holds_marker(p, markers):
                shown = ", ".join(sorted(entries)[:3]) + (", ..." if len(entries) > 3 else "")
                raise UsageError(f"{flag} {p} already holds files that are not a {what} ({shown}); it is never "
                                 "replaced — choose a new or empty folder")
            foreign = sorted(e for e in entries if own is not None and not any(fnmatch.fnmatchcase(e, g) for g in own))
            if foreign:
                shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
                raise UsageError(f"{flag} {p} holds a {what} and also files it did not write ({shown}); it is "
                                 "never replaced — move those files out, or choose another folder")
            if not overwrite:
                raise UsageError(f"{flag} {p} already holds a {what} from an earlier run; pass --overwrite to "
                                 "replace it, or choose another folder")
    check_writable(p.parent, flag, shown=p)
    return p
