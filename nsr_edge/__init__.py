"""nsr-edge: Neural Sparse Representation models from training to edge runtimes.

Kept import-light on purpose: `nsr_edge.runtime` must import on a device without torch.
"""

__version__ = "0.1.0"
