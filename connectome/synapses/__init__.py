"""Synapses: a cleft CNN (cleft probability and partner directions), clefts as objects across blocks,
pre- and postsynaptic partners by the predicted directions, and the synapse table."""
