"""PURE: which filesystem holds a path (from ``/proc/self/mountinfo``'s text), and which request-store
layout it gets.

SQLite's WAL keeps its index in shared memory (the ``-shm`` file, mapped by every process that
opens the database): processes on one host share it, processes on two hosts cannot, and SQLite's
own documentation says a WAL database must not be used over a network filesystem. A cluster's
shared filesystem (NFS, Lustre, GPFS, ...) is where a cache must live for a requeued job on another
node to resume, so there the store takes the ``shards`` layout (``cache/shards.py``: one append-only
file per writer process, no lock and no shared memory between writers); elsewhere ``wal``.

Worked example: with ``/`` on ext4 and ``/scratch`` on nfs4, ``/scratch/me/cache`` lies on nfs4
(the longest mount point that is a prefix of the path wins), so its layout is ``shards``.
"""

from __future__ import annotations

from dataclasses import dataclass

#: filesystem types (as /proc/self/mountinfo names them) whose files other hosts share
NETWORK_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "afs", "9p", "lustre", "gpfs", "beegfs", "ceph", "glusterfs",
    "panfs", "wekafs", "pvfs2", "orangefs", "ocfs2", "gfs2", "davfs", "fuse.glusterfs", "fuse.sshfs",
    "fuse.ceph-fuse", "fuse.gcsfuse", "fuse.s3fs", "fuse.rclone", "fuse.juicefs", "fuse.weka", "fuse.lustre",
    "fuse.cvmfs", "fuse.beegfs",
})
LAYOUTS = ("auto", "wal", "shards")


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash in paths as octal escapes (``\\040``)."""
    for code in ("040", "011", "012", "134"):
        field = field.replace("\\" + code, chr(int(code, 8)))
    return field


def parse_mountinfo(text: str) -> list[tuple[str, str]]:
    """``(mount point, filesystem type)`` for every line of ``/proc/self/mountinfo``."""
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if sep and len(fields) >= 5 and tail:
            mounts.append((_unescape(fields[4]), tail[0]))
    return mounts


def filesystem_of(path: str, mounts: list[tuple[str, str]]) -> str | None:
    """The type of the filesystem holding the absolute ``path``: the longest matching mount point
    (the last one mounted there, if several were), or ``None`` when nothing matches."""
    best, best_len = None, -1
    for point, fstype in mounts:
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= best_len:
            best, best_len = fstype, len(point)
    return best


def is_network(fstype: str | None) -> bool:
    return fstype is not None and fstype.lower() in NETWORK_FILESYSTEMS


@dataclass(frozen=True)
class LayoutChoice:
    layout: str
    """``wal`` (one SQLite file, WAL) or ``shards`` (one file per writer process)."""
    reason: str


def choose_layout(requested: str, fstype: str | None) -> LayoutChoice:
    """``requested`` is ``auto`` (by filesystem), ``wal`` or ``shards`` (forced); checked by the caller."""
    where = fstype or "an unknown filesystem"
    if requested == "shards":
        return LayoutChoice("shards", f"forced by LM_EVAL_EXT_CACHE_LAYOUT=shards (on {where})")
    if requested == "wal":
        reason = "forced by LM_EVAL_EXT_CACHE_LAYOUT=wal"
        if is_network(fstype):
            reason += f"; {fstype} is a network filesystem: only processes of one host may use this cache"
        return LayoutChoice("wal", reason)
    if is_network(fstype):
        return LayoutChoice("shards", f"{fstype} is a network filesystem (SQLite's WAL needs memory shared by every "
                                      "process): one shard file per writer process, no shared locks")
    return LayoutChoice("wal", f"{where} is local: one SQLite file in WAL mode shared by every process")
