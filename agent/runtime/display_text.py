"""What a lane's text display says, in the configured language (`api.language`).

A line display has about 20 characters, and the person at the gate needs the gist in their
language, not the engine's full sentence. So each outcome has a short text per language; a
language or status without one falls back to English, and a status nobody wrote a text for
shows the decision's own message (never nothing). Language tags are matched on their first
part (`nl-BE` -> `nl`).
"""

from __future__ import annotations

LANGUAGES = ("en", "nl", "de", "fr")
# key -> one text per language of LANGUAGES ("" = none: English is shown)
TEXTS: dict[str, tuple[str, ...]] = {
    "valid": ("Welcome", "Welkom", "Willkommen", "Bienvenue"),
    "exit": ("Goodbye", "Tot ziens", "Auf Wiedersehen", "Au revoir"),
    "alreadyIn": ("Already inside", "Al binnen", "Bereits drinnen", "Deja entre"),
    "alreadyOut": ("Already outside", "Al buiten", "Bereits draussen", "Deja sorti"),
    "denied": ("Not valid - see staff", "Ongeldig - zie staf", "Ungueltig - Personal",
               "Invalide - voir staff"),
    "zoneClosed": ("Zone closed", "Zone gesloten", "Bereich geschlossen", "Zone fermee"),
    "ageUnknown": ("Age check - see staff", "Leeftijd - zie staf", "Alter - Personal",
                   "Age - voir staff"),
    "tooYoung": ("Age limit - see staff", "Leeftijdsgrens", "Altersgrenze", "Limite d'age"),
    "tooOld": ("Age limit - see staff", "Leeftijdsgrens", "Altersgrenze", "Limite d'age"),
    "full": ("Zone full", "Zone vol", "Bereich voll", "Zone pleine"),
    "scansInExceeded": ("Ticket used up", "Ticket opgebruikt", "Ticket verbraucht",
                        "Billet epuise"),
    "requiresConfirmation": ("Please see staff", "Zie staf", "Bitte Personal",
                             "Voir le staff"),
    "notPassed": ("Not passed - scan again", "Niet doorgelopen", "Nicht durchgegangen",
                  "Non passe - rescanner"),
    "gateNotOpened": ("Gate did not open - staff", "Poort dicht - zie staf",
                      "Tor zu - Personal", "Porte fermee - staff"),
    "gateError": ("Gate error - see staff", "Storing - zie staf", "Stoerung - Personal",
                  "Erreur - voir staff"),
    "releasedGate": ("Gate open - walk through", "Poort open - doorlopen",
                     "Tor offen - durchgehen", "Porte ouverte"),
    "alarm": ("Alarm - staff called", "Alarm - staf komt", "Alarm - Personal kommt",
              "Alarme - staff appele"),
}


def display_text(language: str, key: str, fallback: str) -> str:
    """The short text for `key` (a decision status, `exit`, or an outcome such as
    `notPassed`) in `language`; English when that language lacks it; else `fallback`."""
    lang = (language or "en").split("-")[0].split("_")[0].lower()
    texts = TEXTS.get(key)
    if texts is None:
        return fallback
    index = LANGUAGES.index(lang) if lang in LANGUAGES else 0
    return texts[index] or texts[0]
