"""molm3d_core: read 3D molecules with a language model (3D-MoLM).

Assets come from installed packages or user-given paths; the Hugging Face hub is never contacted.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

__version__ = "0.1.0"
