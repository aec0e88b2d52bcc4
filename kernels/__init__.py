"""GPU kernels (torch/Triton) and their CPU reference twins.

Kernels do no I/O, logging or validation: a Python driver in ``bigembed`` owns batching,
progress and errors. Every GPU kernel has a CPU reference and a test comparing the two.
"""
