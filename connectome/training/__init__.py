"""Training of the affinity U-Net: targets, augmentation, data, the training loop, loss curves."""
