"""Neuroglancer's client and the viewer state, served by the neuroglancer package's own server (its
bundled client reads its state from that server); `export.server` adds the data files to it."""

from __future__ import annotations

from typing import Any


def start_viewer(state: dict, host: str = "127.0.0.1", port: int = 0) -> Any:
    """A neuroglancer.Viewer showing `state`, served on host:port (0: any free port); keep a reference
    to it while it is served. Its URL is `viewer.get_viewer_url()`."""
    import neuroglancer

    neuroglancer.set_server_bind_address(host, port)
    viewer = neuroglancer.Viewer()
    set_state(viewer, state)
    return viewer


def set_state(viewer: Any, state: dict) -> None:
    import neuroglancer

    viewer.set_state(neuroglancer.ViewerState(state))


def stop_viewer() -> None:
    import neuroglancer

    neuroglancer.stop()
