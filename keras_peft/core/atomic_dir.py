"""Writing a directory so that readers never see it half-written."""

import contextlib
import os
import shutil
import tempfile


def _fsync_tree(path):
    for parent, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(parent, name), "rb") as f:
                os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_directory(path, may_replace):
    """Yields a temporary directory that becomes `path` on success.

    Files are written into a sibling temporary directory, flushed to disk and
    renamed into place. An existing `path` is moved aside first and deleted
    only after the new directory is in place, so at every moment `path` is
    either absent, the old directory or the complete new one. On error the
    temporary directory is removed and `path` is left as it was.

    Args:
        path: str. The directory to create or replace.
        may_replace: callable. Called with an existing `path`; returns whether
            it may be replaced (it raises or returns `False` otherwise).
    """
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    if os.path.exists(path) and not may_replace(path):
        raise ValueError(f"Refusing to overwrite {path!r}.")
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(
        prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=parent
    )
    try:
        # `mkdtemp` makes it private (0700); the result should be readable
        # as any new directory is (a server may run as another user).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        yield tmp
        _fsync_tree(tmp)
        old = None
        if os.path.exists(path):
            old = tempfile.mkdtemp(
                prefix=f".{os.path.basename(path)}.", suffix=".old", dir=parent
            )
            os.rmdir(old)
            os.rename(path, old)
        try:
            os.rename(tmp, path)
        except BaseException:
            if old is not None:
                os.rename(old, path)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
