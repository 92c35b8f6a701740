"""Sources and decoding: files (and later live streams) to upright RGB frames with PTS times."""
