"""General-knowledge questions for meta-training, built from templates.

Paired with a document that says nothing about them, their target is the base model's own
answer without context: an adapter should leave what the model already knew as it was. The
questions are generated here, apart from the evaluation set in
``doc2lora_rag/evaluation/general_questions.json``; every subject that set asks about is
left out, so the evaluation measures questions no training step saw.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from doc2lora_rag.training.data import QARecord

# Countries with their capital, continent, language and currency; the evaluation set's
# countries (France, Japan, Italy, Germany, Spain, the United Kingdom, Russia, Egypt,
# Brazil, Kenya, Mexico, the United States, China) are not among them.
_COUNTRIES = [
    "Canada",
    "Australia",
    "India",
    "Argentina",
    "Portugal",
    "Greece",
    "Sweden",
    "Norway",
    "Poland",
    "Turkey",
    "Peru",
    "Chile",
    "Nigeria",
    "Morocco",
    "Thailand",
    "Vietnam",
    "Indonesia",
    "Ireland",
    "Austria",
    "the Netherlands",
    "Switzerland",
    "South Korea",
    "Cuba",
    "Finland",
    "Denmark",
    "Colombia",
    "Iran",
    "Pakistan",
    "Ethiopia",
    "New Zealand",
]
_COUNTRY_TEMPLATES = [
    "What is the capital of {}?",
    "Which continent is {} in?",
    "What language do most people speak in {}?",
    "What is the currency used in {}?",
    "What is the population of {} roughly?",
    "Name a famous dish from {}.",
]
_ELEMENTS = ["silver", "iron", "copper", "sodium", "helium", "carbon", "hydrogen", "nitrogen", "lead", "calcium"]
_ANIMALS = ["dog", "cat", "cow", "horse", "duck", "sheep", "owl", "frog", "elephant", "snake", "pig", "wolf"]
_ANIMAL_TEMPLATES = [
    "What sound does a {} make?",
    "How many legs does a {} have?",
    "What does a {} eat?",
    "Where does a {} usually live?",
    "Is a {} a mammal?",
]
_THINGS_WITH_COLOURS = ["a banana", "grass", "snow", "coal", "a ripe tomato", "milk", "a carrot", "chocolate"]
_WORDS = ["happy", "big", "fast", "early", "light", "strong", "open", "full", "young", "loud", "wet", "rich"]
_NOUNS = ["child", "mouse", "tooth", "leaf", "box", "city", "knife", "man", "goose", "story", "bus", "foot"]
_SHAPES = ["square", "pentagon", "octagon", "rectangle", "cube"]
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_MONTHS = ["January", "March", "April", "May", "June", "July", "August", "October", "November"]
_BOOKS = [
    ("Pride and Prejudice", "novel"),
    ("Don Quixote", "novel"),
    ("The Odyssey", "poem"),
    ("War and Peace", "novel"),
    ("Moby-Dick", "novel"),
    ("Oliver Twist", "novel"),
    ("The Divine Comedy", "poem"),
]
_PEOPLE = [
    "Isaac Newton",
    "Marie Curie",
    "Abraham Lincoln",
    "Napoleon Bonaparte",
    "Wolfgang Amadeus Mozart",
    "Galileo Galilei",
    "Cleopatra",
    "Nelson Mandela",
    "Thomas Edison",
    "Ludwig van Beethoven",
]
_TASKS = [
    "Give me a synonym for {}.",
    "Use the word {} in a sentence.",
    "How do you spell {} backwards?",
]


def general_training_questions() -> list[str]:
    """Every templated question, in a fixed order (about 500)."""
    questions = [t.format(c) for c in _COUNTRIES for t in _COUNTRY_TEMPLATES]
    questions += [f"What is the chemical symbol for {e}?" for e in _ELEMENTS]
    questions += [f"Is {e} a metal or a gas at room temperature?" for e in _ELEMENTS]
    questions += [t.format(a) for a in _ANIMALS for t in _ANIMAL_TEMPLATES]
    questions += [f"What colour is {thing}?" for thing in _THINGS_WITH_COLOURS]
    questions += [f"What is the opposite of {w}?" for w in _WORDS]
    questions += [t.format(w) for w in _WORDS for t in _TASKS]
    questions += [f"What is the plural of {n}?" for n in _NOUNS]
    questions += [f"How many sides does a {s} have?" for s in _SHAPES]
    questions += [f"What day comes after {d}?" for d in _DAYS]
    questions += [f"What month comes after {m}?" for m in _MONTHS]
    questions += [f"Who wrote the {kind} {title}?" for title, kind in _BOOKS]
    questions += [f"What is {title} about?" for title, _ in _BOOKS]
    questions += [f"Who was {p}?" for p in _PEOPLE]
    questions += [f"What is {p} famous for?" for p in _PEOPLE]
    questions += [f"In which century did {p} live?" for p in _PEOPLE]
    questions += [f"What is {a} plus {b}?" for a in range(3, 40, 4) for b in range(2, 30, 5)]
    questions += [f"What is {a} times {b}?" for a in range(2, 13, 2) for b in range(3, 12, 2)]
    questions += [f"What is {a} minus {b}?" for a in range(20, 100, 9) for b in range(1, 19, 6)]
    return questions


def general_records(documents: Sequence[str], count: int, seed: int = 0) -> list[QARecord]:
    """``count`` records, each a templated general question paired with a random document;
    the base model answers without that document (``teacher_sees_context=False``)."""
    unique = list(dict.fromkeys(documents))
    if not unique:
        raise ValueError("general questions need documents to pair them with")
    questions = general_training_questions()
    rng = random.Random(f"general-{seed}")
    order: list[str] = []
    while len(order) < count:  # shuffled passes: every question once before any repeats
        order += rng.sample(questions, len(questions))
    return [QARecord(rng.choice(unique), q, None, "general", teacher_sees_context=False) for q in order[:count]]
