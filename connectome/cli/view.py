"""Serve an output directory to Neuroglancer and print its URL (the first line starting with http).

Shows raw, the segmentation (every segment coloured in the 2-D panels) with its meshes, skeletons
and segment properties (size; class and synapse counts where segments.csv / synapses.csv exist), the
synapses as points (from synapses.csv, written to OUT_DIR/synapse_annotations when it is newer), and
the other volumes hidden. `--state FILE` writes the viewer state as JSON;
with `--source-url gs://bucket/copy-of-OUT_DIR` it points at that copy (for a lab's own Neuroglancer)
and nothing is served.
"""

from __future__ import annotations

import json
import os
import sys
import threading


def add_arguments(parser) -> None:
    parser.add_argument("out_dir", metavar="OUT_DIR", help="output directory of a run (e.g. demo-out)")
    parser.add_argument("--port", type=_port, default=0, help="port to serve on (default: any free port)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--no-browser", action="store_true", help="print the URL only; do not open a browser")
    parser.add_argument("--log-requests", action="store_true",
                        help="log every request served on stderr (failed ones are always logged)")
    parser.add_argument("--state", metavar="FILE", default=None, help="also write the Neuroglancer state JSON here")
    parser.add_argument("--source-url", metavar="URL", type=_source_url, default=None,
                        help="where a copy of OUT_DIR lives (gs://..., s3://..., https://...): the --state "
                             "points there, and nothing is served")


SCHEMES = ("gs", "s3", "http", "https")  # where Neuroglancer reads a copy of the output from


def _port(text: str) -> int:
    import argparse

    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 0-65535 (0: any free port), found {text!r}")
    return port


def _source_url(text: str) -> str:
    import argparse
    import urllib.parse

    url = urllib.parse.urlsplit(text)
    if url.scheme not in SCHEMES or not url.netloc:
        forms = ", ".join(f"{s}://..." for s in SCHEMES)
        raise argparse.ArgumentTypeError(f"expected the URL of a copy of OUT_DIR ({forms}), found {text!r}")
    return text


def _write_state(path: str, state: dict) -> None:
    from connectome.core.errors import UserError

    try:
        with open(path, "w") as f:
            json.dump(state, f, indent=1)
    except OSError as e:
        raise UserError(f"{path}: cannot write the state ({e.strerror or e})") from None


def _refresh(layers) -> bool:
    """Bring the synapse annotations and the segment properties (class, synapse counts) up to date with
    synapses.csv / segments.csv when those are newer (made after the meshes); True when any was written.
    Written under the output's lock: while a run holds it, or where the output cannot be written (a read-only
    copy), they are shown as they are, and one line says so."""
    import contextlib

    from connectome.core.errors import UserError
    from connectome.engine.lock import output_lock

    with contextlib.ExitStack() as held:
        try:
            held.enter_context(output_lock(layers.out_dir, "connectome view (refreshing synapse annotations)"))
        except UserError as e:  # a run is writing the output
            print(f"connectome view: {e}; the synapse annotations and segment properties are shown as they are, "
                  "not brought up to date", file=sys.stderr)
            return False
        except OSError:
            pass  # no lock can be written here (a read-only output): nothing is written unless something is stale
        try:
            return _refreshed(layers)
        except OSError as e:
            print(f"connectome view: {layers.out_dir}: cannot bring the synapse annotations and segment properties "
                  f"up to date with synapses.csv / segments.csv ({e.strerror or e}); they are shown as they are",
                  file=sys.stderr)
            return False


def _refreshed(layers) -> bool:
    from connectome.export.annotations import refresh_annotations
    from connectome.morphology.properties import refresh

    had = layers.synapses
    written = refresh(layers.out_dir)
    reference = layers.synapse_segmentation or layers.segmentation or layers.raw  # where the table's voxels are
    if reference is not None:
        written = (refresh_annotations(layers.out_dir, reference.voxel_size, reference.offset) != had) or written
    return written


def run(args) -> int:
    from connectome.core.errors import UserError
    from connectome.export.layers import find_layers, local_path
    from connectome.export.server import FileTree, mount_url, serve_files
    from connectome.export.state import url_mapper, viewer_state
    from connectome.export.viewer import set_state, start_viewer, stop_viewer

    layers = find_layers(args.out_dir)
    out_dir = layers.out_dir
    if _refresh(layers):
        layers = find_layers(out_dir)
    # volumes outside the output directory (the run's raw input; a segmentation given to `synapses`)
    outside = {name: local_path(layer.address) for name in ("raw", "segmentation", "synapse_segmentation")
               if (layer := getattr(layers, name)) is not None
               and not local_path(layer.address).startswith(out_dir + os.sep)}
    if args.source_url:
        if args.state is None:
            raise UserError("--source-url: give --state FILE too (the state is what points at the copy)")
        for name in outside:
            print(f"connectome view: {name} ({getattr(layers, name).address}) lies outside {out_dir}; "
                  "the state leaves it out", file=sys.stderr)
            setattr(layers, name, None)
        if layers.raw is None and layers.segmentation is None and not layers.others:
            raise UserError(f"--source-url: every volume of {out_dir} lies outside it ({', '.join(outside)}), so the "
                            "state would show nothing; copy them into it, or view it served (without --source-url)")
        _write_state(args.state, viewer_state(layers, url_mapper(out_dir, args.source_url)))
        print(f"state: {args.state} (sources under {args.source_url})")
        return 0
    mounts = {"out": out_dir, **outside}
    try:
        viewer = start_viewer({}, args.host, args.port)
    except OSError as e:
        raise UserError(f"--port {args.port}: cannot listen on {args.host}:{args.port} ({e.strerror or e})") from None
    base = serve_files(FileTree(mounts, log_all=args.log_requests))
    extra = {directory: mount_url(base, name) for name, directory in outside.items()}
    state = viewer_state(layers, url_mapper(out_dir, mount_url(base, "out"), extra))
    set_state(viewer, state)
    if args.state:
        _write_state(args.state, state)
    url = viewer.get_viewer_url()
    print(url, flush=True)
    print(f"serving {out_dir}; Ctrl-C stops", flush=True)
    if not args.no_browser:
        import webbrowser

        webbrowser.open(url)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        stop_viewer()
    return 0
