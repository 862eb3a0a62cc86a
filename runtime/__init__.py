"""Torch-free device runtime (numpy + Pillow): import the submodules (tiling, images, imresize, metrics, degrade,
datasets). Kept empty on purpose so that importing the package costs nothing."""
