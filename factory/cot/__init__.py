"""Self-supervised chain-of-thought data construction with several teacher VLMs (DESIGN.md §1).

``teachers.py`` holds the backends (an OpenAI-compatible endpoint, a local transformers model, and the
offline attribute-grounded teacher); ``build.py`` asks them, keeps only traces whose answer matches the
label the teacher never saw, and writes resumable JSONL plus a summary; ``datasets.py`` turns the result
into the SFT and GRPO datasets of the training stages.
"""
