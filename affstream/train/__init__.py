"""Training and evaluation on Aff-Wild2-format data. Never imported by inference."""
