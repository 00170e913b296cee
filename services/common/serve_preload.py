"""Imported first by every Ray worker of the stack (Ray's `preload_python_modules`, given as
RAY_preload_python_modules by services/stack.py locally and by k8s/base/rayservice.yaml in the
cluster): applies common/serve_patches.py before Serve's proxy or a replica starts."""

from .serve_patches import apply

apply()
