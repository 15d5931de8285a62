"""parvagpu: serve many DNN inference models on the fewest MIG/MPS-partitioned GPUs."""

__version__ = "0.1.0"
