"""Per-track windows for temporal heads: planning and stitching overlapping windows."""
