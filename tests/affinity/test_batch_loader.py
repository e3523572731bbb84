"""Training batches made in worker processes (`connectome.training.loader`, `train affinities --loader-workers`)."""

from __future__ import annotations

import json
import multiprocessing
from functools import partial

import numpy as np
import pytest

from connectome.training.augment import Augmenter
from connectome.training.loader import batch_stream, default_workers, worker_seeds

NN = ((-1, 0, 0), (0, -1, 0), (0, 0, -1))


def make_batches():
    """`make(rng=..., augmenter=...)` of the affinity training on a small Voronoi volume, and its augmenter."""
    from test_training import voronoi_volume

    from connectome.affinity.training import TrainSettings, _batch, augment_config
    from connectome.training.data import Pair

    raw, labels = voronoi_volume((20, 40, 40), 24, seed=5)
    settings = TrainSettings(raw=["r"], labels=["l"], name="x", out="x", patch=(8, 16, 16), batch_size=2)
    make = partial(_batch, pairs=[Pair("r", "l", raw, labels)], weights=np.array([1.0]), settings=settings,
                   offsets=NN, margin=(1, 1, 1), two_d=np.array([False]), voxel_size=(8.0, 8.0, 8.0))
    return make, Augmenter(augment_config("iso"), 0)


def take(stream, n):
    return [next(stream) for _ in range(n)]


def same(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a[:3], b[:3]))


def test_without_workers_the_batches_are_the_runs_own_sequence():
    make, augmenter = make_batches()
    streamed = take(batch_stream(make, 0, np.random.default_rng(3), augmenter, seed=3), 3)
    rng, again = np.random.default_rng(3), Augmenter(augmenter.config, 0)
    direct = [make(rng=rng, augmenter=again) for _ in range(3)]
    assert all(same(a, b) for a, b in zip(streamed, direct))
    assert not same(streamed[0], streamed[1])


@pytest.mark.timeout(120)
def test_worker_batches_repeat_for_a_seed_and_come_round_robin_from_independent_workers():
    before = set(multiprocessing.active_children())  # e.g. the session's Dask workers, when a test started them
    make, augmenter = make_batches()
    streams = [batch_stream(make, 2, np.random.default_rng(0), augmenter, seed=7) for _ in range(2)]
    first, second = (take(stream, 4) for stream in streams)
    assert all(same(a, b) for a, b in zip(first, second))  # the same seed and workers: the same batches
    raw, target, mask, _, _, labels = first[0]
    assert raw.shape == (2, 1, 8, 16, 16) and target.shape == mask.shape == (2, 3, 8, 16, 16)
    assert isinstance(raw, np.ndarray) and isinstance(labels[0], np.ndarray)  # as made, not tensors
    # batch 0 is worker 0's first, batch 1 worker 1's first, batch 2 worker 0's second
    for worker, index in ((0, 0), (1, 1)):
        rng_seed, augment_seed = worker_seeds(7, worker)
        rng, own = np.random.default_rng(rng_seed), Augmenter(augmenter.config, augment_seed)
        assert same(first[index], make(rng=rng, augmenter=own))
        assert same(first[index + 2], make(rng=rng, augmenter=own))
    assert not same(first[0], first[1])
    streams.append(batch_stream(make, 2, np.random.default_rng(0), augmenter, seed=8))
    other = take(streams[-1], 1)
    assert not same(first[0], other[0])
    assert len(set(multiprocessing.active_children()) - before) == 6
    for stream in streams:
        stream.close()
    assert set(multiprocessing.active_children()) - before == set()  # closing a stream stops its workers


@pytest.mark.timeout(300)
def test_training_with_loader_workers_records_them_and_refuses_a_negative_count(tmp_path, capsys):
    from test_training import voronoi_volume

    from connectome.cli.main import main

    raw, labels = voronoi_volume((24, 48, 48), 40, seed=0)
    np.savez(tmp_path / "t.npz", raw=raw, labels=labels)
    common = ["train", "affinities", "--raw", f"{tmp_path}/t.npz#raw", "--labels", f"{tmp_path}/t.npz#labels",
              "--name", "w", "--out", str(tmp_path / "run"), "--iterations", "6", "--patch", "16", "24", "24",
              "--voxel-size", "8", "8", "8"]
    before = set(multiprocessing.active_children())
    assert main([*common, "--loader-workers", "2"]) == 0
    assert set(multiprocessing.active_children()) - before == set()  # the workers were stopped when training ended
    meta = json.loads((tmp_path / "run" / "w.json").read_text())
    assert meta["provenance"]["settings"]["loader_workers"] == 2 and meta["provenance"]["loader_workers"] == 2
    assert meta["provenance"]["iterations"] == 6
    capsys.readouterr()
    assert main([*common, "--loader-workers", "-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["connectome train: error: --loader-workers -1: expected 0 (batches made in the training "
                   "process) or more"], err


def test_default_workers_are_none_on_the_cpu_and_the_spare_cores_for_a_gpu(monkeypatch):
    import torch

    assert default_workers(torch.device("cpu")) == 0
    for cores, expected in ((32, 16), (16, 14), (6, 4), (2, 0), (1, 0)):
        monkeypatch.setattr("connectome.training.loader.available_cores", lambda cores=cores: cores)
        assert default_workers(torch.device("cuda")) == expected, cores
