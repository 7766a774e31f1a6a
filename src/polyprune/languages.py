"""Language registry: FLORES-200 codes (``fra_Latn``) are the canonical ids.

:func:`get_language` also accepts ISO 639-1 (``fr``), ISO 639-3 (``fra``), BCP-47-style
script tags (``zh-Hans``) and English names (``French``), case-insensitively. Each
:class:`Language` carries its English display name (used in prompts) and its XNLI / MARC codes.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Iterable

from .errors import UserError


@dataclass(frozen=True)
class Language:
    """One language variety (language + script)."""

    code: str  # FLORES-200 code, e.g. "fra_Latn"
    name: str  # English display name, e.g. "French"
    iso1: str | None  # ISO 639-1, e.g. "fr"
    iso3: str  # ISO 639-3 of the FLORES code, e.g. "fra"
    xnli: str | None = None  # XNLI language code, or None when XNLI lacks it
    marc: str | None = None  # MARC language code, or None
    aliases: tuple[str, ...] = ()  # other accepted spellings (macro-language codes, other names)
    flores_plus: str | None = None  # config name on the hub's FLORES+ when it differs from ``code``

    @property
    def script(self) -> str:
        return self.code.split("_", 1)[1]

    @property
    def hub_code(self) -> str:
        """Config name of this language in ``openlanguagedata/flores_plus``."""
        return self.flores_plus or self.code

    def __str__(self) -> str:
        return self.code


XNLI_CODES = ("ar", "bg", "de", "el", "en", "es", "fr", "hi", "ru", "sw", "th", "tr", "ur", "vi", "zh")
MARC_CODES = ("en", "de", "es", "fr", "ja", "zh")

# code, English name, ISO 639-1, extra aliases. XNLI/MARC codes follow from ISO 639-1 (above),
# except where a variety is not the one those datasets use (Traditional Chinese).
_TABLE: list[tuple[str, str, str | None, tuple[str, ...]]] = [
    # the 37 languages of the offline FLORES-200 devtest
    ("amh_Ethi", "Amharic", "am", ()),
    ("arb_Arab", "Arabic", "ar", ("ara", "Modern Standard Arabic")),
    ("ben_Beng", "Bengali", "bn", ("Bangla",)),
    ("bul_Cyrl", "Bulgarian", "bg", ()),
    ("ces_Latn", "Czech", "cs", ("cze",)),
    ("deu_Latn", "German", "de", ("ger",)),
    ("ell_Grek", "Greek", "el", ("gre", "Modern Greek")),
    ("eng_Latn", "English", "en", ()),
    ("fin_Latn", "Finnish", "fi", ()),
    ("fra_Latn", "French", "fr", ("fre",)),
    ("hau_Latn", "Hausa", "ha", ()),
    ("heb_Hebr", "Hebrew", "he", ()),
    ("hin_Deva", "Hindi", "hi", ()),
    ("ind_Latn", "Indonesian", "id", ()),
    ("ita_Latn", "Italian", "it", ()),
    ("jpn_Jpan", "Japanese", "ja", ()),
    ("kat_Geor", "Georgian", "ka", ("geo",)),
    ("kor_Hang", "Korean", "ko", ()),
    ("mar_Deva", "Marathi", "mr", ()),
    ("nld_Latn", "Dutch", "nl", ("dut",)),
    ("pes_Arab", "Persian", "fa", ("fas", "per", "Farsi", "Western Persian")),
    ("pol_Latn", "Polish", "pl", ()),
    ("por_Latn", "Portuguese", "pt", ()),
    ("rus_Cyrl", "Russian", "ru", ()),
    ("spa_Latn", "Spanish", "es", ()),
    ("swe_Latn", "Swedish", "sv", ()),
    ("swh_Latn", "Swahili", "sw", ("swa", "Kiswahili")),
    ("tam_Taml", "Tamil", "ta", ()),
    ("tel_Telu", "Telugu", "te", ()),
    ("tha_Thai", "Thai", "th", ()),
    ("tur_Latn", "Turkish", "tr", ()),
    ("ukr_Cyrl", "Ukrainian", "uk", ()),
    ("urd_Arab", "Urdu", "ur", ()),
    ("vie_Latn", "Vietnamese", "vi", ()),
    ("yor_Latn", "Yoruba", "yo", ()),
    ("zho_Hans", "Chinese", "zh", ("zh-Hans", "zh-CN", "cmn", "cmn_Hans", "chi", "Mandarin",
                                   "Simplified Chinese", "Chinese (Simplified)")),
    ("zho_Hant", "Traditional Chinese", None, ("zh-Hant", "zh-TW", "cmn_Hant", "Chinese (Traditional)")),
    # further BLOOM / XGLM / mGPT languages
    ("cat_Latn", "Catalan", "ca", ()),
    ("eus_Latn", "Basque", "eu", ("baq",)),
    ("glg_Latn", "Galician", "gl", ()),
    ("asm_Beng", "Assamese", "as", ()),
    ("guj_Gujr", "Gujarati", "gu", ()),
    ("kan_Knda", "Kannada", "kn", ()),
    ("mal_Mlym", "Malayalam", "ml", ()),
    ("npi_Deva", "Nepali", "ne", ("nep",)),
    ("ory_Orya", "Odia", "or", ("ori", "Oriya")),
    ("pan_Guru", "Punjabi", "pa", ("Panjabi",)),
    ("aka_Latn", "Akan", "ak", ("twi", "Twi")),
    ("bam_Latn", "Bambara", "bm", ()),
    ("ibo_Latn", "Igbo", "ig", ()),
    ("kik_Latn", "Kikuyu", "ki", ()),
    ("kin_Latn", "Kinyarwanda", "rw", ()),
    ("lin_Latn", "Lingala", "ln", ()),
    ("lug_Latn", "Luganda", "lg", ("Ganda",)),
    ("nso_Latn", "Northern Sotho", "nso", ("Sepedi",)),
    ("nya_Latn", "Chichewa", "ny", ("Nyanja",)),
    ("run_Latn", "Kirundi", "rn", ("Rundi",)),
    ("sna_Latn", "Shona", "sn", ()),
    ("sot_Latn", "Southern Sotho", "st", ("Sesotho",)),
    ("tsn_Latn", "Tswana", "tn", ("Setswana",)),
    ("tso_Latn", "Tsonga", "ts", ()),
    ("tum_Latn", "Tumbuka", None, ()),
    ("wol_Latn", "Wolof", "wo", ()),
    ("xho_Latn", "Xhosa", "xh", ()),
    ("zul_Latn", "Zulu", "zu", ()),
    ("fon_Latn", "Fon", None, ()),
    ("est_Latn", "Estonian", "et", ("ekk",)),
    ("hat_Latn", "Haitian Creole", "ht", ("Haitian",)),
    ("quy_Latn", "Quechua", "qu", ("Ayacucho Quechua",)),
    ("mya_Mymr", "Burmese", "my", ("bur", "Myanmar")),
    ("zsm_Latn", "Malay", "ms", ("msa", "may")),
    ("dan_Latn", "Danish", "da", ()),
    ("nob_Latn", "Norwegian", "nb", ("no", "nor", "Norwegian Bokmal")),
    ("ron_Latn", "Romanian", "ro", ("rum",)),
    ("hun_Latn", "Hungarian", "hu", ()),
    ("slk_Latn", "Slovak", "sk", ("slo",)),
    ("slv_Latn", "Slovenian", "sl", ()),
    ("hrv_Latn", "Croatian", "hr", ()),
    ("srp_Cyrl", "Serbian", "sr", ()),
    ("lit_Latn", "Lithuanian", "lt", ()),
    ("lvs_Latn", "Latvian", "lv", ("lav",)),
    ("tgl_Latn", "Tagalog", "tl", ("Filipino", "fil")),
    ("khm_Khmr", "Khmer", "km", ()),
    ("lao_Laoo", "Lao", "lo", ()),
    ("sin_Sinh", "Sinhala", "si", ()),
    ("kaz_Cyrl", "Kazakh", "kk", ()),
    ("uzn_Latn", "Uzbek", "uz", ("uzb",)),
    ("azj_Latn", "Azerbaijani", "az", ("aze",)),
    ("hye_Armn", "Armenian", "hy", ("arm",)),
    ("isl_Latn", "Icelandic", "is", ("ice",)),
    ("som_Latn", "Somali", "so", ()),
    ("gaz_Latn", "Oromo", "om", ("orm",)),
    ("yue_Hant", "Cantonese", None, ("zh-yue",)),
]

# FLORES+ on the hub renamed some FLORES-200 configs.
_FLORES_PLUS = {"zho_Hans": "cmn_Hans", "zho_Hant": "cmn_Hant", "est_Latn": "ekk_Latn"}


def _build() -> dict[str, Language]:
    out = {}
    for code, name, iso1, aliases in _TABLE:
        xnli = iso1 if iso1 in XNLI_CODES and code != "zho_Hant" else None
        marc = iso1 if iso1 in MARC_CODES and code != "zho_Hant" else None
        out[code] = Language(code, name, iso1, code.split("_")[0], xnli, marc, aliases, _FLORES_PLUS.get(code))
    return out


LANGUAGES: dict[str, Language] = _build()


def _norm(key: str) -> str:
    k = key.strip().lower()
    return k.replace("-", "_") if ("-" in k or "_" in k) else k


def _index() -> dict[str, str]:
    """lower-cased key -> code. Earlier table rows win ISO 639-3 ties (zho → Simplified)."""
    idx: dict[str, str] = {}
    for lang in LANGUAGES.values():
        for key in (lang.code, lang.name, lang.iso1, lang.iso3, *lang.aliases, lang.flores_plus):
            if key:
                idx.setdefault(_norm(key), lang.code)
    return idx


_INDEX = _index()


def get_language(code_or_name: str | Language) -> Language:
    """The :class:`Language` for a FLORES-200 code, ISO 639-1/639-3 code or English name."""
    if isinstance(code_or_name, Language):
        return code_or_name
    key = _norm(str(code_or_name))
    if key in _INDEX:
        return LANGUAGES[_INDEX[key]]
    close = dict.fromkeys(_INDEX[c] for c in difflib.get_close_matches(key, list(_INDEX), n=5, cutoff=0.6))
    hint = ", ".join(f"{c} ({LANGUAGES[c].name})" for c in list(close)[:3])
    hint = f"did you mean {hint}?" if hint else "run `polyprune data languages` to list languages"
    raise UserError(f"unknown language {code_or_name!r}: give a FLORES-200 code (e.g. fra_Latn), "
                    f"an ISO 639 code or an English name; {hint}")


def resolve_langs(items: Iterable[str | Language] | str | None) -> list[Language]:
    """Languages from a list (items may be comma-separated); duplicates removed, order kept."""
    if items is None:
        return []
    if isinstance(items, (str, Language)):
        items = [items]
    out: list[Language] = []
    for it in items:
        parts = [it] if isinstance(it, Language) else [p for p in str(it).split(",") if p.strip()]
        for p in parts:
            lang = get_language(p)
            if lang not in out:
                out.append(lang)
    return out


__all__ = ["LANGUAGES", "Language", "MARC_CODES", "XNLI_CODES", "get_language", "resolve_langs"]
