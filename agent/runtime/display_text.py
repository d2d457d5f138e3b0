"""What a lane's text display says, in the configured language (`api.language`).

A line display has about 20 characters, and the person at the gate needs the gist in their
language, not the engine's full sentence. So each outcome has a short text per language; a
language or status without one falls back to English, and a status nobody wrote a text for
shows the decision's own message (never nothing). Language tags are matched on their first
part (`nl-BE` -> `nl`).
"""

from __future__ import annotations

TEXTS: dict[str, dict[str, str]] = {
    "en": {"valid": "Welcome", "exit": "Goodbye", "alreadyIn": "Already inside",
           "alreadyOut": "Already outside", "denied": "Not valid - see staff",
           "zoneClosed": "Zone closed", "ageUnknown": "Age check - see staff",
           "tooYoung": "Age limit - see staff", "tooOld": "Age limit - see staff",
           "full": "Zone full", "scansInExceeded": "Ticket used up",
           "requiresConfirmation": "Please see staff",
           "notPassed": "Not passed - scan again", "releasedGate": "Gate open - walk through",
           "alarm": "Alarm - staff called"},
    "nl": {"valid": "Welkom", "exit": "Tot ziens", "alreadyIn": "Al binnen",
           "alreadyOut": "Al buiten", "denied": "Ongeldig - zie staf",
           "zoneClosed": "Zone gesloten", "ageUnknown": "Leeftijd - zie staf",
           "tooYoung": "Leeftijdsgrens", "tooOld": "Leeftijdsgrens", "full": "Zone vol",
           "scansInExceeded": "Ticket opgebruikt", "requiresConfirmation": "Zie staf",
           "notPassed": "Niet doorgelopen", "releasedGate": "Poort open - doorlopen",
           "alarm": "Alarm - staf komt"},
    "de": {"valid": "Willkommen", "exit": "Auf Wiedersehen", "alreadyIn": "Bereits drinnen",
           "alreadyOut": "Bereits draussen", "denied": "Ungueltig - Personal",
           "zoneClosed": "Bereich geschlossen", "ageUnknown": "Alter - Personal",
           "tooYoung": "Altersgrenze", "tooOld": "Altersgrenze", "full": "Bereich voll",
           "scansInExceeded": "Ticket verbraucht", "requiresConfirmation": "Bitte Personal",
           "notPassed": "Nicht durchgegangen", "releasedGate": "Tor offen - durchgehen",
           "alarm": "Alarm - Personal kommt"},
    "fr": {"valid": "Bienvenue", "exit": "Au revoir", "alreadyIn": "Deja entre",
           "alreadyOut": "Deja sorti", "denied": "Invalide - voir staff",
           "zoneClosed": "Zone fermee", "ageUnknown": "Age - voir staff",
           "tooYoung": "Limite d'age", "tooOld": "Limite d'age", "full": "Zone pleine",
           "scansInExceeded": "Billet epuise", "requiresConfirmation": "Voir le staff",
           "notPassed": "Non passe - rescanner", "releasedGate": "Porte ouverte",
           "alarm": "Alarme - staff appele"},
}


def display_text(language: str, key: str, fallback: str) -> str:
    """The short text for `key` (a decision status, `exit`, or an outcome such as
    `notPassed`) in `language`; English when that language lacks it; else `fallback`."""
    lang = (language or "en").split("-")[0].split("_")[0].lower()
    for table in (TEXTS.get(lang, {}), TEXTS["en"]):
        if key in table:
            return table[key]
    return fallback
