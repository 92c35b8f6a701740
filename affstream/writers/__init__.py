"""Output writers: per-frame CSV and the per-video JSON report, written atomically."""
