"""A plan for cluster tools: `k8s` (one Deployment per segment), `mig_parted` (mig-parted configs
with GPU Operator labels), and `common` (YAML and writing the files)."""
