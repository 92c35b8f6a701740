"""Heads turning CLIP features into valence/arousal, expressions and action units."""
