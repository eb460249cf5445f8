"""EmoSet-118K: the official label file (``info.json``, package data), a reader for the official layout
(``factory.data.emoset``) and a synthetic generator (``factory.data.synth``).

Kept import-free so that ``factory.prompts`` can read ``info.json`` from here without a cycle.
"""
