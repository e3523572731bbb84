"""Neurite types: a class per segment (axon, dendrite, spine, soma, glia) from morphology (size,
shape, radius, surface), image features (intensity, dark organelle density) and synapse counts."""
