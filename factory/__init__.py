"""SVLM Factory: train small vision-language models with the CLGRPO recipe and ship them to the edge.

Subpackages: ``factory.data`` (EmoSet reader, synthetic generator), ``factory.cot`` (teacher CoT data),
``factory.families`` (the one model-family registry), ``factory.cli`` (the ``svlm`` command).
"""

__version__ = "0.1.0"
