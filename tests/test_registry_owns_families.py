"""The family registry owns every family difference: code outside ``factory/families.py`` neither compares
against a family name nor spells a family's tokens (``<IMG_CONTEXT>``, ``<|im_end|>``, …)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from factory.families import FAMILIES

ROOT = Path(__file__).resolve().parents[1]
REGISTRY = ROOT / "factory" / "families.py"


def _sources() -> list[Path]:
    files = [p for d in ("factory", "export", "runtime", "demo", "benchmarks") for p in (ROOT / d).rglob("*.py")]
    return [p for p in files if p != REGISTRY]


def _family_tokens() -> set[str]:
    tokens = set()
    for fam in FAMILIES.values():
        tokens |= {*fam.special_tokens, fam.image_token, fam.eos_token, fam.pad_token, *fam.tokenizer_attrs.values()}
    return tokens


def test_no_code_outside_the_registry_branches_on_a_family_name():
    names = "|".join(map(re.escape, FAMILIES))
    quoted = rf"""["'](?:{names})["']"""
    comparison = re.compile(rf"""(?:==|!=|\bis\b|\bin\b)\s*(?:not\s+)?[\(\[\{{]?[^\n#]*?{quoted}|{quoted}\s*(?:==|!=|\bin\b)""")
    startswith = re.compile(rf"""\.(?:startswith|endswith)\(\s*{quoted}""")
    hits = []
    for path in _sources():
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if comparison.search(code) or startswith.search(code):
                hits.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not hits, "family names compared outside factory/families.py:\n" + "\n".join(hits)


def test_no_code_outside_the_registry_hard_codes_a_family_token():
    tokens = _family_tokens()
    assert {"<IMG_CONTEXT>", "<image>", "<|image_pad|>", "<|im_end|>", "<end_of_utterance>"} <= tokens
    pattern = re.compile("|".join(rf"""["'][^"'\n]*{re.escape(t)}[^"'\n]*["']""" for t in sorted(tokens)))
    hits = []
    for path in _sources():
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not hits, "family tokens spelled outside factory/families.py:\n" + "\n".join(hits)


def test_the_checks_have_teeth(tmp_path, monkeypatch):
    """The two checks catch what export/build.py used to do."""
    bad = tmp_path / "factory" / "bad.py"
    bad.parent.mkdir()
    bad.write_text('if family.name != "internvl":\n    pass\nx = tok.convert_tokens_to_ids("<IMG_CONTEXT>")\n')
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    for check in (test_no_code_outside_the_registry_branches_on_a_family_name,
                  test_no_code_outside_the_registry_hard_codes_a_family_token):
        try:
            check()
        except AssertionError as exc:
            assert "bad.py" in str(exc)
        else:
            raise AssertionError(f"{check.__name__} missed bad.py")
