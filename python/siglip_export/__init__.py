"""Export SigLIP checkpoints to the TorchScript model directory read by siglip-serve."""

__version__ = "0.1.0"
