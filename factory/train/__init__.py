"""Training: the stage table (``stages``), the SFT and GRPO runners, and ``svlm train`` (``runner``).

Run: ``svlm train --config configs/train_default.yaml --stages 0-4`` (after ``svlm run`` made data and CoT).
"""
