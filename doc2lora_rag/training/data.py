"""Seeded, reproducible sources of (context, question[, answer]) records for meta-training.

- SQuAD-format JSON (the project's split: articles 1-38 train, 39-48 validation) and JSONL;
- synthetic fact documents about fictional entities, whose answers no model can know;
- needle-in-a-haystack documents of a chosen token length;
- cloze questions on any text: the start of a sentence, asking how it ends;
- SQuAD paragraphs with an answer swapped for another of the same form, so the question
  alone (or what the model knew) no longer tells the answer;
- "unrelated" records, pairing a document with a question about something else, whose target
  is the base model's own answer without context (so adapters leave general questions alone).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from doc2lora_rag.hypernetwork.chunking import split_sentences

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

SQUAD_TRAIN_ARTICLES = 38


@dataclass(frozen=True)
class QARecord:
    """One training or evaluation example.

    ``teacher_sees_context`` is False for unrelated questions: their target is what the base
    model answers without any document. ``alternatives`` are further accepted answers (SQuAD
    lists up to three per question): evaluation scores the best match, as SQuAD's official
    script does; training uses ``answer`` alone.
    """

    context: str
    question: str
    answer: str | None = None
    source: str = "custom"
    teacher_sees_context: bool = True
    alternatives: tuple[str, ...] = ()

    @property
    def gold_answers(self) -> list[str]:
        """Every accepted answer, ``answer`` first."""
        return [a for a in (self.answer, *self.alternatives) if a is not None]

    @property
    def key(self) -> str:
        payload = json.dumps([self.context, self.question, self.teacher_sees_context])
        return hashlib.sha256(payload.encode()).hexdigest()[:24]

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------- files


def even_sample(records: list, limit: int) -> list:
    """``limit`` records spread evenly across the list, so every article is represented."""
    if len(records) <= limit:
        return records
    step = len(records) / limit
    return [records[int(i * step)] for i in range(limit)]


def squad_records(
    path: str | Path, split: str = "train", per_paragraph: int | None = None, held_out_articles: int = 0
) -> list[QARecord]:
    """Records of a SQuAD-format file; ``split`` is ``train`` (articles 1-38),
    ``validation`` (39-48) or ``all``. ``per_paragraph`` caps questions per paragraph.

    ``held_out_articles`` keeps the last articles of the training split out of ``train``;
    ``split="held_out"`` gives those articles alone: a probe of unseen topics that is not the
    validation split."""
    if not 0 <= held_out_articles < SQUAD_TRAIN_ARTICLES:
        raise ValueError(f"held_out_articles must be between 0 and {SQUAD_TRAIN_ARTICLES - 1}")
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as handle:
        articles = json.load(handle)["data"]
    kept = SQUAD_TRAIN_ARTICLES - held_out_articles
    if split == "train":
        articles = articles[:kept]
    elif split == "held_out":
        if not held_out_articles:
            raise ValueError("split 'held_out' needs held_out_articles > 0")
        articles = articles[kept:SQUAD_TRAIN_ARTICLES]
    elif split == "validation":
        articles = articles[SQUAD_TRAIN_ARTICLES:]
    elif split != "all":
        raise ValueError(f"unknown split {split!r}: use train, held_out, validation or all")
    records = []
    for article in articles:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"][:per_paragraph]:
                answers = list(dict.fromkeys(a["text"] for a in qa.get("answers", [])))
                answer, others = (answers[0], tuple(answers[1:])) if answers else (None, ())
                records.append(QARecord(paragraph["context"], qa["question"], answer, "squad", alternatives=others))
    return records


def jsonl_records(path: str | Path) -> list[QARecord]:
    """Records of a JSONL file with ``context``, ``question`` and optional ``answer`` fields."""
    records = []
    for number, row in _jsonl_rows(path):
        if "context" not in row or "question" not in row:
            raise ValueError(f"{path}:{number}: needs 'context' and 'question' fields")
        records.append(QARecord(row["context"], row["question"], row.get("answer"), "jsonl"))
    return records


def text_documents(path: str | Path) -> list[str]:
    """The ``text`` field of each line of a JSONL file: documents without questions, for
    sources that make their own (cloze, general)."""
    documents = []
    for number, row in _jsonl_rows(path):
        text = row.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{path}:{number}: needs a non-empty 'text' field")
        documents.append(text)
    return documents


def _jsonl_rows(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Each non-blank line of a JSONL file, parsed, with its line number."""
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                yield number, json.loads(line)


# ---------------------------------------------------------------------------- synthetic facts

_SYLLABLES = [
    "bra",
    "dor",
    "vel",
    "kin",
    "sto",
    "mar",
    "lu",
    "qua",
    "zen",
    "tor",
    "fi",
    "gal",
    "ros",
    "nim",
    "the",
    "pax",
    "ul",
    "vor",
    "dri",
    "mey",
    "sal",
    "kor",
    "bel",
    "tu",
]
_FIRST = [
    "Mira",
    "Tobias",
    "Ilse",
    "Koa",
    "Renata",
    "Oskar",
    "Yara",
    "Dmitri",
    "Anouk",
    "Felix",
    "Sana",
    "Tiago",
    "Lena",
    "Bruno",
    "Ayla",
    "Ivo",
]
_CITIES_SUFFIX = ["ford", "ville", "haven", "port", " Falls", "burg", "mouth", " Ridge"]
_PRODUCTS = [
    "copper kettles",
    "wooden bicycles",
    "solar lanterns",
    "glass marbles",
    "wool blankets",
    "ceramic tiles",
    "paper kites",
    "brass telescopes",
    "rope ladders",
    "clay pipes",
]
_COLORS = ["crimson", "teal", "amber", "violet", "olive", "silver", "indigo", "coral", "ivory", "jade"]
_ANIMALS = ["otter", "heron", "lynx", "badger", "falcon", "tortoise", "gecko", "marten", "ibis", "vole"]


def _made_up_name(rng: random.Random, parts: int = 2) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(parts)).capitalize()


def _company_name(rng: random.Random) -> str:
    return f"{_made_up_name(rng, 3)} {rng.choice(['Industries', 'Works', 'Labs', 'Trading Co.'])}"


def _person_name(rng: random.Random) -> str:
    return f"{rng.choice(_FIRST)} {_made_up_name(rng)}"


def _company_facts(rng: random.Random, company: str | None = None) -> tuple[str, list[tuple[str, str]]]:
    company = company or _company_name(rng)
    founder = f"{rng.choice(_FIRST)} {_made_up_name(rng)}"
    city = _made_up_name(rng) + rng.choice(_CITIES_SUFFIX)
    year = str(rng.randint(1850, 2015))
    product = rng.choice(_PRODUCTS)
    staff = str(rng.randint(12, 9800))
    color = rng.choice(_COLORS)
    sentences = [
        (
            f"{company} was founded in {year} by {founder}.",
            [(f"In which year was {company} founded?", year), (f"Who founded {company}?", founder)],
        ),
        (f"Its headquarters are in the town of {city}.", [(f"Where are the headquarters of {company}?", city)]),
        (f"The company is best known for its {product}.", [(f"What is {company} best known for?", product)]),
        (f"It employs {staff} people.", [(f"How many people does {company} employ?", staff)]),
        (f"Its logo is {color}.", [(f"What color is the logo of {company}?", color)]),
    ]
    rest = sentences[1:]  # the founding sentence introduces the name; the rest say "it"
    rng.shuffle(rest)
    sentences = [sentences[0], *rest]
    text = " ".join(s for s, _ in sentences)
    return text, [qa for _, qas in sentences for qa in qas]


def _person_facts(rng: random.Random, person: str | None = None) -> tuple[str, list[tuple[str, str]]]:
    person = person or _person_name(rng)
    city = _made_up_name(rng) + rng.choice(_CITIES_SUFFIX)
    year = str(rng.randint(1890, 2005))
    pet = f"{rng.choice(_COLORS)} {rng.choice(_ANIMALS)}"
    pet_name = _made_up_name(rng)
    job = rng.choice(["lighthouse keeper", "clockmaker", "botanist", "cartographer", "violinist", "beekeeper"])
    sentences = [
        (
            f"{person} was born in {year} in {city}.",
            [(f"When was {person} born?", year), (f"Where was {person} born?", city)],
        ),
        (f"{person} works as a {job}.", [(f"What does {person} work as?", job)]),
        (
            f"{person} keeps a {pet} named {pet_name}.",
            [(f"What is the name of {person}'s pet?", pet_name), (f"What animal does {person} keep?", pet)],
        ),
    ]
    rng.shuffle(sentences)
    return " ".join(s for s, _ in sentences), [qa for _, qas in sentences for qa in qas]


def synthetic_fact_records(
    count: int, seed: int = 0, questions_per_doc: int = 2, entities: int | None = None
) -> list[QARecord]:
    """``count`` records over fictional companies and people, seeded and unlimited.

    With ``entities``, names come from that many companies and as many people, so the same
    name recurs across documents with other facts: a question alone then says nothing of its
    answer, and only the document does."""
    rng = random.Random(f"synthetic-facts-{seed}")
    names = random.Random(f"synthetic-entities-{seed}")
    companies = [_company_name(names) for _ in range(entities or 0)]
    people = [_person_name(names) for _ in range(entities or 0)]
    records: list[QARecord] = []
    while len(records) < count:
        paragraphs, qas, used = [], [], set()
        for _ in range(rng.randint(1, 3)):
            make = rng.choice([_company_facts, _person_facts])
            pool = companies if make is _company_facts else people
            name = rng.choice(pool) if pool else None
            text, facts = make(rng, name if name not in used else None)
            used.add(name)
            paragraphs.append(text)
            qas.extend(facts)
        context = "\n\n".join(paragraphs)
        for question, answer in rng.sample(qas, min(questions_per_doc, len(qas))):
            records.append(QARecord(context, question, answer, "synthetic"))
    return records[:count]


# ---------------------------------------------------------------------------- needle in a haystack

_FILLER_SUBJECTS = [
    "The river",
    "A quiet village",
    "The old library",
    "The morning train",
    "A small garden",
    "The harbour",
    "The mountain path",
    "An autumn market",
    "The museum",
    "A wooden bridge",
]
_FILLER_VERBS = [
    "was calm",
    "looked busy",
    "stood empty",
    "was painted again",
    "smelled of rain",
    "was full of visitors",
    "seemed older than usual",
    "glowed in the sunset",
]
_FILLER_TAILS = [
    "that afternoon.",
    "during the long winter.",
    "after the festival.",
    "for many years.",
    "on most weekdays.",
    "before the storm arrived.",
    "in early spring.",
    "at dawn.",
]


def filler_sentence(rng: random.Random) -> str:
    return f"{rng.choice(_FILLER_SUBJECTS)} {rng.choice(_FILLER_VERBS)} {rng.choice(_FILLER_TAILS)}"


def token_counter(tokenizer: PreTrainedTokenizerBase) -> Callable[[str], int]:
    """The length measure ``needle_records`` builds haystacks by: tokens of the text alone."""

    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))

    return count


def has_repeated_digit(number: str) -> bool:
    """Whether a digit follows itself somewhere in ``number`` (the needles adapters miss most)."""
    return any(a == b for a, b in zip(number, number[1:], strict=False))


def _needle_sentence(key: str, number: str) -> str:
    return f"The secret number of the {key} is {number}."


def needle_records(
    count: int,
    haystack_tokens: int,
    count_tokens: Callable[[str], int],
    seed: int = 0,
    keys: list[str] | None = None,
    distractors: int = 0,
    repeated_digits: float = 0.0,
) -> list[QARecord]:
    """Documents of about ``haystack_tokens`` tokens of filler with one fact at a random depth.

    The needle's key ("the teal heron") comes from ``keys`` when given, else from 100 colour-animal
    pairs; keys that recur with other numbers make the question alone useless, only the document
    tells the answer. ``distractors`` more needles of other keys, at random depths, make the
    adapter tell which number belongs to the key asked: with one number in a haystack of words,
    knowing *a* number is enough. They come from their own random stream, so the same seed gives
    the same haystacks, needles and questions with and without them.

    ``repeated_digits`` is the share of needle numbers drawn to hold a digit twice in a row
    (42777, 80400): about 30% of plain draws do, and adapters miss them most. At 0 the draws are
    those of earlier versions, so evaluation needles stay the same."""
    if distractors < 0:
        raise ValueError(f"distractors must be >= 0, not {distractors}")
    if not 0.0 <= repeated_digits <= 1.0:
        raise ValueError(f"repeated_digits must be a share in [0, 1], not {repeated_digits}")
    rng = random.Random(f"needle-{seed}-{haystack_tokens}")
    others = random.Random(f"needle-distractors-{seed}-{haystack_tokens}")
    pool = sorted(set(keys or [f"{color} {animal}" for color in _COLORS for animal in _ANIMALS]))
    if distractors >= len(pool):
        raise ValueError(f"{distractors} distractors need more than {len(pool)} distinct keys")
    # Measure the filler once, then build each haystack to length by sentence count.
    probe = [filler_sentence(rng) for _ in range(50)]
    tokens_per_sentence = max(1.0, count_tokens(" ".join(probe)) / len(probe))
    records = []
    for _ in range(count):
        key = rng.choice(keys) if keys else f"{rng.choice(_COLORS)} {rng.choice(_ANIMALS)}"
        code = str(rng.randint(1000, 99999))
        if repeated_digits and rng.random() < repeated_digits:
            while not has_repeated_digit(code):
                code = str(rng.randint(1000, 99999))
        sentences = [filler_sentence(rng) for _ in range(max(1, int(haystack_tokens / tokens_per_sentence)))]
        sentences.insert(rng.randint(0, len(sentences)), _needle_sentence(key, code))
        for other in others.sample([k for k in pool if k != key], distractors):
            number = code
            while number == code:
                number = str(others.randint(1000, 99999))
            sentences.insert(others.randint(0, len(sentences)), _needle_sentence(other, number))
        records.append(QARecord(" ".join(sentences), f"What is the secret number of the {key}?", code, "niah"))
    return records


# ---------------------------------------------------------------------------- sentence endings


def cloze_records(
    documents: Sequence[str],
    count: int,
    seed: int = 0,
    max_answer_words: int = 5,
    quote_words: int | None = None,
) -> list[QARecord]:
    """Questions that quote the start of one of a document's sentences and ask how it ends.

    They need no annotation, so any text can teach the hypernetwork to carry *every* sentence
    of a chunk, not only the few that a dataset's questions ask about. The answer is the last
    1 to ``max_answer_words`` words of a sentence of at least five words, without its final
    punctuation; at least four words (at most 24) are quoted, so that the start names the
    sentence. With ``quote_words`` only the sentence's first ``quote_words`` words are quoted
    and the answer is all the rest: too little to guess from, so only reading pays."""
    if max_answer_words < 1:
        raise ValueError(f"max_answer_words must be >= 1, not {max_answer_words}")
    if quote_words is not None and quote_words < 1:
        raise ValueError(f"quote_words must be >= 1, not {quote_words}")
    least = max(5, (quote_words or 0) + 1)  # words a sentence needs to leave an answer
    candidates = [
        (document, words)
        for document in dict.fromkeys(documents)
        for sentence in split_sentences(document)
        if len(words := sentence.split()) >= least
    ]
    if count > 0 and not candidates:
        raise ValueError(f"cloze questions need documents with sentences of at least {least} words")
    rng = random.Random(f"cloze-{seed}")
    records = []
    for _ in range(count):
        document, words = rng.choice(candidates)
        if quote_words is None:
            cloze = sentence_cloze(words, rng.randint(1, min(max_answer_words, len(words) - 4)))
        else:
            cloze = sentence_continuation(words, quote_words)
        if cloze is not None:
            records.append(QARecord(document, *cloze, "cloze"))
    return records


def sentence_cloze(words: Sequence[str], answer_words: int) -> tuple[str, str] | None:
    """The question that quotes a sentence (given as its words) up to its last
    ``answer_words`` words, and those words as the answer; None when they are punctuation."""
    cut = len(words) - answer_words
    answer = " ".join(words[cut:]).rstrip(".!?;:,\"'\u201d\u2019")
    if not answer:
        return None
    start = " ".join(words[max(0, cut - 24) : cut])  # long sentences: their last 24 words
    start = start if cut <= 24 else f"... {start}"
    return f'How does this sentence of the document end? "{start} ..."', answer


def sentence_continuation(words: Sequence[str], quote_words: int) -> tuple[str, str] | None:
    """The cloze that quotes a sentence's first ``quote_words`` words and asks for all the
    rest; None when nothing but punctuation is left."""
    return sentence_cloze(words, len(words) - quote_words) if len(words) > quote_words else None


# ---------------------------------------------------------------------------- swapped answers


def answer_form(answer: str) -> str:
    """A coarse type of answer (a number, a name, or other words), so that a swapped-in answer
    fits the sentence it lands in."""
    if any(c.isdigit() for c in answer):
        return "number"
    return "name" if answer[:1].isupper() else "words"


def swapped_answer_records(records: Sequence[QARecord], seed: int = 0) -> list[QARecord]:
    """Each record's document with every occurrence of its answer replaced by the answer of
    another record of the same form, and that answer as the target.

    Beside the original, the same question then has two documents with two answers: what
    the model knew before, or the question's wording, can no longer tell which one is meant,
    so only reading pays. Records whose answer is not found as whole words, or for which none
    of 20 drawn partners fits (one that does not already appear in the document, and neither
    contains the other), are left out."""
    pool = [r for r in records if r.answer]
    by_form: dict[str, list[str]] = {}
    for answer in dict.fromkeys(r.answer for r in pool):
        by_form.setdefault(answer_form(answer), []).append(answer)
    rng = random.Random(f"swapped-{seed}")
    result = []
    for record in pool:
        pieces = re.split(rf"(?<!\w){re.escape(record.answer)}(?!\w)", record.context)
        if len(pieces) == 1:  # the answer is not in the document as whole words
            continue
        partners = by_form[answer_form(record.answer)]
        own, text = record.answer.lower(), record.context.lower()
        fits = (p for p in rng.sample(partners, min(len(partners), 20)) if not _overlap(own, p.lower(), text))
        partner = next(fits, None)
        if partner is not None:
            result.append(QARecord(partner.join(pieces), record.question, partner, "swapped"))
    return result


def _overlap(own: str, other: str, document: str) -> bool:
    return own in other or other in own or other in document


# ---------------------------------------------------------------------------- unrelated questions


def unrelated_records(records: list[QARecord], count: int, seed: int = 0) -> list[QARecord]:
    """Pair documents with questions from other documents; the target is the base model's
    answer without context, which teaches adapters to leave unrelated questions alone."""
    if count > 0 and len({r.context for r in records}) < 2:
        raise ValueError("unrelated questions need records from at least two different documents")
    rng = random.Random(f"unrelated-{seed}")
    result = []
    while len(result) < count:
        doc, other = rng.sample(records, 2)
        if doc.context != other.context:
            result.append(QARecord(doc.context, other.question, None, "unrelated", teacher_sees_context=False))
    return result


def cycle(records: list[QARecord], seed: int) -> Iterator[QARecord]:
    """Endless shuffled passes over ``records``."""
    rng = random.Random(seed)
    order = list(range(len(records)))
    while True:
        rng.shuffle(order)
        for index in order:
            yield records[index]
