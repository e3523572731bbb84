"""Image stages: copy/ingest (`stages.CopyStage`) and per-section contrast normalisation (`normalize`).
Alignment and downsampling belong here too."""
