"""Temporary files that a killed run left beside its outputs (`segments.csv.tmp123`, `transforms.npz.123.tmp.npz`,
`synapse_annotations.tmp123/`, `.run.json.123.tmp`, `.connectome/lock.HOST.123`): a writer of a small output file
writes it aside under a name with its process id, then renames it into place, so a kill between the two leaves one.
The run that holds the output's lock removes them (`remove_litter`) in a connectome output directory only (one with
done-markers).

Only the names these writers make are removed (`LITTER`: each a file of the output directory, of `.connectome/`
(its stage list, a lock being taken), of `.connectome/logs/` (the failure log), of `alignment/`, of `meshes/` or
`skeletons/`, or the annotation layer's folder being written), and only where the process whose id it carries is
gone (a name that carries a host: only on that host), so a user's `backup.old1/` or a file of another command's live
write stays. Volumes, the table folders in `tables/` and the done-markers clean up after themselves (a merge tree's
folder with `remove_dead_writers`)."""

from __future__ import annotations

import os
import re
import shutil
import socket

# folder (relative to the output directory) -> what a killed write leaves there; groups "p1", "p2"...: the writer's
# process id (one of them matches), "host": the host it ran on
LITTER: dict[str, re.Pattern] = {
    ".": re.compile(r"^(?:\.run\.json\.(?P<p1>\d+)\.tmp"  # engine.plan._record_config
                    r"|[\w.-]+\.(?:csv|graphml|json|npz|png|txt)\.tmp(?P<p2>\d+)(?:\.npz|\.png)?"  # tables, graph, luts
                    r"|synapse_annotations\.(?:tmp|old)(?P<p3>\d+))$"),  # export.annotations (folders)
    ".connectome": re.compile(r"^(?:\.plan\.json\.(?P<p1>\d+)\.tmp"  # engine.stage_list
                              r"|lock\.(?P<host>.+)\.(?P<p2>\d+))$"),  # engine.lock (a lock written aside)
    ".connectome/logs": re.compile(r"^failure\.log\.(?P<p1>\d+)\.tmp$"),  # engine.plan._failure_log
    "alignment": re.compile(r"^[\w.-]+\.npz\.(?P<p1>\d+)\.tmp\.npz$"),  # transforms.npz, section levels
    "tables": re.compile(r"^[\w.-]+\.npz\.tmp(?P<p1>\d+)\.npz$"),  # lookup tables (io.lookup, synapses.merge)
    "meshes": re.compile(r"^[\w.:-]+\.(?P<p1>\d+)\.tmp(?:\.npz)?$"),  # morphology mesh/fragment files
    "skeletons": re.compile(r"^[\w.:-]+\.(?P<p1>\d+)\.tmp(?:\.npz)?$"),
}
FOLDERS = re.compile(r"^synapse_annotations\.(?:tmp|old)\d+$")  # the only litter that is a folder


def _gone(pid: int) -> bool:
    import psutil

    return pid != os.getpid() and not psutil.pid_exists(pid)


def _writer_gone(match: re.Match) -> bool:
    """Whether the process that wrote a file (the id in the name's "p..." group; on this host, where the name
    says one) is gone; a file written on another host cannot be checked from here and stays."""
    names = match.groupdict()
    if names.get("host") is not None and names["host"] != socket.gethostname():
        return False
    return _gone(int(next(v for k, v in names.items() if k.startswith("p") and v is not None)))


def remove_dead_writers(root: str, pattern: re.Pattern) -> list[str]:
    """Remove the files under `root` (at any depth) whose name matches `pattern` and whose writer (`_writer_gone`)
    is gone: the temporary files of a folder whose writers write aside and rename (a merge tree's). Returns the
    paths removed."""
    removed: list[str] = []
    for directory, _, files in os.walk(root):
        for name in files:
            match = pattern.match(name)
            if match is None or not _writer_gone(match):
                continue
            path = os.path.join(directory, name)
            try:
                os.unlink(path)
            except OSError:
                continue
            removed.append(path)
    return removed


def remove_litter(out_dir: str) -> list[str]:
    """Remove what killed writes left in the connectome output directory `out_dir` (see the module docstring);
    returns the paths removed. Only the run that holds the output's lock calls it."""
    if not os.path.isdir(os.path.join(out_dir, ".connectome", "done")):
        return []  # not (yet) an output of a run: nothing of ours to clean
    removed: list[str] = []
    for folder, pattern in LITTER.items():
        directory = os.path.normpath(os.path.join(out_dir, folder))
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            match = pattern.match(entry.name)
            if match is None:
                continue
            if not _writer_gone(match):
                continue  # its writer may still be writing it
            if entry.is_dir(follow_symlinks=False):
                if not FOLDERS.match(entry.name):
                    continue
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                try:
                    os.unlink(entry.path)
                except OSError:
                    continue
            removed.append(entry.path)
    return removed
