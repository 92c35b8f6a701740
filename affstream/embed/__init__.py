"""CLIP backbones (open_clip): loading by spec and embedding face crops."""
