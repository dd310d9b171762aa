"""Ground floor of core: the hand-written kernels (C for the CPU decode step, Triton for the GPU
decode step and the training GELU). They import torch and each other only; the model and the
backends import them, never the other way round."""
