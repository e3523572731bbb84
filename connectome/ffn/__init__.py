"""Flood-filling networks (Januszewski et al. 2018): model, inference canvas, training, blockwise stages."""
