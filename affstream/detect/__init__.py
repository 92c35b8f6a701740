"""Faces: MTCNN detection, tracking across frames, and landmark alignment."""
