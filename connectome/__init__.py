"""connectome: blockwise reconstruction of neurons and synapses from 3D EM volumes."""

__version__ = "0.1.0"
