"""molm3d's Ray Serve deployments: one folder per stage, each a thin adapter over molm3d_core.

conformer (CPU) -> encoder (small GPU) -> lm (large GPU); retrieval; gateway = the public API.
`serve.yaml` beside this file is the one description of the deployed stack.
"""
