"""A plan for cluster tools: Kubernetes manifests, mig-parted configs, GPU Operator labels."""
