"""The GPU script (``benchmarks/gpu/run.sh``): soft-NMS kernel correctness and speed, end-to-end
FPS and the official pipeline side by side, in one invocation on one CUDA GPU; ``--dry-run``
exercises the same steps on the CPU. See docs/gpu.md."""
