"""Ray Tune storage on a local (or shared, mounted) disk whose files are written whole or not at all.

Tune writes its experiment state to a staging folder and copies it into the storage path, over the
last copy, every few seconds and at every checkpoint; trials copy their checkpoints there too. A process
killed during such a copy leaves a file cut short in place of a whole one (seen here: the experiment
state, 0.7 MB, fails to parse about one poll in ten thousand), and ``--resume`` would then find no state
to restore. Every file this filesystem writes goes to a scratch name beside it and is renamed over the
target when it is closed: a rename is atomic on one disk, so a reader finds the old file or the new one.
Object stores (``s3://...``) already give that, and are left as they are.
"""

from __future__ import annotations

import io
import os
import tempfile
from typing import Any

import pyarrow
import pyarrow.fs


class WholeFile(io.RawIOBase):
    """A file being written under a scratch name, renamed over ``path`` when it is closed."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        folder = os.path.dirname(path) or "."
        os.makedirs(folder, exist_ok=True)  # as pyarrow's copy_files expects of a local filesystem
        handle, self.scratch = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.")
        self.file = os.fdopen(handle, "wb")

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        return self.file.write(data)

    def close(self) -> None:
        if self.closed:
            return
        self.file.close()
        os.replace(self.scratch, self.path)
        super().close()


class WholeFileWrites(pyarrow.fs.FileSystemHandler):
    """The local filesystem, except that each file written appears whole (``WholeFile``)."""

    def __init__(self) -> None:
        self.local = pyarrow.fs.LocalFileSystem()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WholeFileWrites)

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __reduce__(self) -> tuple:  # Tune sends its storage context, and this with it, to every trial
        return WholeFileWrites, ()

    def get_type_name(self) -> str:
        return "local-whole-files"

    def normalize_path(self, path: str) -> str:
        return self.local.normalize_path(path)

    def get_file_info(self, paths: list[str]) -> list[pyarrow.fs.FileInfo]:
        return self.local.get_file_info(paths)

    def get_file_info_selector(self, selector: pyarrow.fs.FileSelector) -> list[pyarrow.fs.FileInfo]:
        return self.local.get_file_info(selector)

    def create_dir(self, path: str, recursive: bool) -> None:
        self.local.create_dir(path, recursive=recursive)

    def delete_dir(self, path: str) -> None:
        self.local.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self.local.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        raise OSError("refusing to delete the contents of the filesystem's root")

    def delete_file(self, path: str) -> None:
        self.local.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        self.local.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        with self.local.open_input_stream(src) as source, self.open_output_stream(dest, None) as target:
            while chunk := source.read(1 << 20):
                target.write(chunk)

    def open_input_stream(self, path: str) -> pyarrow.NativeFile:
        return self.local.open_input_stream(path)

    def open_input_file(self, path: str) -> pyarrow.NativeFile:
        return self.local.open_input_file(path)

    def open_output_stream(self, path: str, metadata: Any) -> pyarrow.NativeFile:
        return pyarrow.PythonFile(WholeFile(path), mode="w")

    def open_append_stream(self, path: str, metadata: Any) -> pyarrow.NativeFile:
        return self.local.open_append_stream(path)


def tune_filesystem(storage_path: str) -> pyarrow.fs.FileSystem | None:
    """The filesystem to give Ray Tune for ``storage_path``: whole-file writes for a local path, None (Tune
    picks its own) for a URI."""
    return None if "://" in storage_path else pyarrow.fs.PyFileSystem(WholeFileWrites())


def filesystem_and_path(path_or_uri: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """Where to write a file of the sweep's storage by hand: a local path through whole-file writes, a
    URI (``s3://...``) through its own filesystem."""
    filesystem = tune_filesystem(path_or_uri)
    return pyarrow.fs.FileSystem.from_uri(path_or_uri) if filesystem is None else (filesystem, path_or_uri)


def is_local(filesystem: pyarrow.fs.FileSystem) -> bool:
    """Whether paths on ``filesystem`` are paths on this machine's disks."""
    if isinstance(filesystem, pyarrow.fs.PyFileSystem):
        return isinstance(filesystem.handler, WholeFileWrites)
    return isinstance(filesystem, pyarrow.fs.LocalFileSystem)
