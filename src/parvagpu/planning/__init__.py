"""Planners: pure functions from a planning request to a deployment map."""
