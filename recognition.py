"""Whether LeNet's answer is a digit at all: a rule on its logits, with its parameters in the model card.

Softmax names a digit for anything it is shown. The card's `extra.recognition` says how to tell:
{"rule": "max_logit", "threshold": t} accepts an image whose largest logit reaches t. The largest logit,
not the softmax's top probability: softmax only compares the ten answers, so a scribble that looks like no
digit at all can still take 100% of it, while the logit's size says how strongly the image matched a
digit. LeNet learned to keep it low on letters and scribbles (training/lenet.py); the card's metrics
`letters_refused` and `scribbles_refused` say how often the rule refuses shapes training never saw
(`python -m training.recognition` prints the whole measurement). A card without the entry recognises
every image, as before.
"""

from __future__ import annotations

import numpy as np

import modelrepo

RULES = ("max_logit",)


def recognised(logits: np.ndarray, card: modelrepo.ModelCard) -> np.ndarray:
    """(N, classes) logits -> (N,) bools: True where the card's rule takes the answer for a digit."""
    rule = card.extra.get("recognition")
    if rule is None:
        return np.ones(len(logits), dtype=bool)
    name = rule.get("rule")
    if name != "max_logit":
        raise ValueError(f"model {card.name}: unknown recognition rule {name!r}: expected one of {', '.join(RULES)}")
    accepted: np.ndarray = np.asarray(logits).max(axis=1) >= float(rule["threshold"])
    return accepted


def checked(card: modelrepo.ModelCard) -> modelrepo.ModelCard | None:
    """The card, if it has a recognition rule this module knows (ModelRepositoryError if it has another)."""
    rule = card.extra.get("recognition")
    if rule is None:
        return None
    if (
        not isinstance(rule, dict)
        or rule.get("rule") not in RULES
        or not isinstance(rule.get("threshold"), int | float)
    ):
        raise modelrepo.ModelRepositoryError(
            f'{card.name}/{card.version}: extra.recognition must be {{"rule": one of {", ".join(RULES)}, '
            f'"threshold": a number}}, got {rule!r}'[:300]
        )
    return card
