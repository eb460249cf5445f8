"""The real tokenizer and processor files (no weights) of each family's reference checkpoint.

``hf/<folder>/`` holds what a hub checkpoint carries besides its weights: tokenizer files, chat template,
image-processor settings, generation config. Big JSON files are gzipped (``tokenizer.json.gz``); a
tokenizer that is exactly another one plus or minus added tokens is stored as ``tokenizer.derive.json``
(``{"base": FOLDER, "added_tokens": [...]}``: the base's ``tokenizer.json`` with its added-token list
replaced). ``materialize`` writes a folder back in the form ``from_pretrained`` reads. Sources, checksums,
derivations and licences: ``hf/PROVENANCE.md``. Which folder belongs to which family is the registry's
business (``factory.families``).
"""

from __future__ import annotations

import gzip
import json
from importlib import resources
from pathlib import Path

GZ, DERIVE = ".gz", "tokenizer.derive.json"


def folder(name: str):
    """The packaged folder ``hf/<name>`` (a Traversable)."""
    root = resources.files(__name__).joinpath("hf", name)
    if not root.is_dir():
        raise FileNotFoundError(f"no real files for {name!r} in factory/assets/hf")
    return root


def read_json(name: str, filename: str) -> dict | None:
    """A JSON file of ``hf/<name>`` (None when the checkpoint has no such file)."""
    f = folder(name).joinpath(filename)
    return json.loads(f.read_text()) if f.is_file() else None


def tokenizer_json(name: str) -> dict:
    """The folder's ``tokenizer.json`` as a dict: stored gzipped, or derived from its base folder."""
    root = folder(name)
    derive = root.joinpath(DERIVE)
    if derive.is_file():
        spec = json.loads(derive.read_text())
        return {**tokenizer_json(spec["base"]), "added_tokens": spec["added_tokens"]}
    return json.loads(gzip.decompress(root.joinpath("tokenizer.json" + GZ).read_bytes()))


def materialize(name: str, dest: str | Path) -> Path:
    """Write the checkpoint's files into ``dest`` as a hub checkpoint holds them (no weights)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for f in folder(name).iterdir():
        if f.name == DERIVE or f.name.endswith(GZ):  # the tokenizer is written below
            continue
        (dest / f.name).write_bytes(f.read_bytes())
    (dest / "tokenizer.json").write_text(json.dumps(tokenizer_json(name), ensure_ascii=False))
    return dest
