"""Tiled inference: plan equal tiles with a context margin, run them in batches, blend the overlaps."""
