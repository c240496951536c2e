"""The EAGLE-3 trainer: data (render, mask, pack, draft vocabulary), the frozen target,
the draft network, the training-time-test unroll and loss, and the DeepSpeed loop.

Nothing here is imported by the CLI at start-up.
"""
