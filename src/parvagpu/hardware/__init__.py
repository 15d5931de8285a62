"""The GPU node's hardware behind small interfaces: MIG (NVML or a strict fake) and MPS daemons."""
