"""The affinity method: a U-Net predicts affinities (`stages`, models in `connectome.models`), the
watershed cuts them into fragments (`watershed`, `fragments`), every block's region graph
(`region_graph`, `agglomerate`) is merged once into a lookup table (`agglomeration`,
`merge_kernel`, `relabel`), and fragments are relabelled. `encoding` decides how affinities are
stored, `segment` is the `connectome segment` preset, `training` and `targets` train its models."""
