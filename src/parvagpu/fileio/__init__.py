"""File effects at the edge: one checked reader for user files, one atomic writer."""
