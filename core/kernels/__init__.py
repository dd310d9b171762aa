"""Ground floor of core: the hand-written kernels (C for the CPU decode step, Triton for the GPU
decode step and the training GELU). They import torch and each other only; the backends' swap-in
modules and training import them, the model never does, and they import nothing of ours above them."""
