"""Segmentation and synapse metrics: VOI, adapted Rand, ERL, synapse F1 (design section 5)."""

from connectome.metrics.contingency import Contingency, ContingencyAccumulator
from connectome.metrics.erl import RunLength, expected_run_length
from connectome.metrics.evaluate import evaluate_volumes
from connectome.metrics.rand import AdaptedRand, adapted_rand, adapted_rand_from_table, adapted_rand_stats
from connectome.metrics.skeletons import Skeletons
from connectome.metrics.synapses import SynapseScores, match_points, synapse_scores
from connectome.metrics.voi import voi, voi_from_table

__all__ = [
    "Contingency",
    "ContingencyAccumulator",
    "voi",
    "voi_from_table",
    "adapted_rand",
    "adapted_rand_from_table",
    "adapted_rand_stats",
    "AdaptedRand",
    "Skeletons",
    "expected_run_length",
    "RunLength",
    "synapse_scores",
    "match_points",
    "SynapseScores",
    "evaluate_volumes",
]
