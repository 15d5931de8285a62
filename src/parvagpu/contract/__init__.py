"""The plan as files: the JSON contract later stages read, and the seed CSV."""
