"""A tiny i18n helper: English strings are the keys, `locales/<lang>.json` holds translations.

    from smolmac.tui.i18n import t
    t("Runs")                        # "Esecuzioni" with SMOLMAC_LANG=it
    t("{n} runs", n=3)               # placeholders use str.format

The language is SMOLMAC_LANG when set, else the system locale (LC_ALL, LC_MESSAGES, LANG);
Italian when it starts with "it", English otherwise.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

LOCALES = Path(__file__).parent / "locales"
_table: dict[str, str] = {}
_language = "en"


def detect_language(env=None) -> str:
    """'it' or 'en' from SMOLMAC_LANG, then LC_ALL / LC_MESSAGES / LANG."""
    env = os.environ if env is None else env
    for key in ("SMOLMAC_LANG", "LC_ALL", "LC_MESSAGES", "LANG"):
        value = env.get(key)
        if value:
            return "it" if value.lower().startswith("it") else "en"
    return "en"


def set_language(language: str) -> None:
    """Switch the UI language ('en' or 'it'); unknown languages fall back to English."""
    global _table, _language
    path = LOCALES / f"{language}.json"
    _language = language if path.is_file() else "en"
    _table = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def language() -> str:
    return _language


def t(text: str, **values) -> str:
    """Translate `text` (an English UI string) and fill its {placeholders}."""
    out = _table.get(text, text)
    return out.format(**values) if values else out


set_language(detect_language())
