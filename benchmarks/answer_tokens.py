"""Where an adapter loses a gold answer: the token at which its greedy pick first leaves it.

    python benchmarks/answer_tokens.py [--limit 120] [--synthetic-seed 21212] [--hypernet DIR]
        [--threads 2] [--json-out FILE]

Each gold answer (end of turn appended) is read under teacher forcing with the document's own
adapter and with another document's, on SQuAD validation questions and on fresh synthetic fact
documents of ``--synthetic-seed``. Greedy decoding reproduces a gold answer while every one of
its tokens is the greedy pick, so the first token that is not is where the answer is lost. The
table gives, per source and adapter, the gold answer's NLL at its first token and at the rest,
the share of answers first missed at token 1, 2 or later, only at the end of turn (the answer
was picked and then continued) or never, and the share of answers picked whole among those
whose first token was picked. Answers lost mostly at their first token and kept once it is
right point at the first token as where training weight would help; losses spread over the
answer point at the whole answer not being carried.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from doc2lora_rag.evaluation.likelihood import AnswerTokens, answer_tokens

from eval_setup import add_eval_options, load_eval

BUCKETS = ("token 1", "token 2", "token 3+", "end of turn", "never")


def miss_bucket(answer: AnswerTokens) -> str:
    """Where the greedy answer leaves the gold one (the last token is the end of turn)."""
    miss = answer.first_miss
    if miss is None:
        return "never"
    if miss == len(answer.picked) - 1:
        return "end of turn"
    return BUCKETS[min(miss, 2)]


def summarise(answers: Sequence[AnswerTokens]) -> dict[str, float]:
    """NLL at the first token and at the later ones, the share of answers per first-miss
    bucket, and the share of answers picked whole given their first token was picked."""
    later = [lp for a in answers for lp in a.logprobs[1:]]
    buckets = [miss_bucket(a) for a in answers]
    first_right = [a for a in answers if a.picked[0]]
    whole = [a for a in first_right if all(a.picked[:-1])]
    return {
        "answers": len(answers),
        "nll_first": -sum(a.logprobs[0] for a in answers) / len(answers),
        "nll_later": -sum(later) / max(1, len(later)),
        **{bucket: buckets.count(bucket) / len(answers) for bucket in BUCKETS},
        "first_picked": len(first_right) / len(answers),
        "whole_given_first": len(whole) / len(first_right) if first_right else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--synthetic-seed", type=int, default=21212, help="seed of the fresh fact documents")
    add_eval_options(parser)
    parser.set_defaults(limit=120)
    args = parser.parse_args()
    engine, sources = load_eval(args, synthetic=f"synthetic:{args.limit}:{args.synthetic_seed}")

    results: dict[str, dict[str, dict[str, float]]] = {}
    for name, records in sources.items():
        records = [r for r in records if r.answer]
        texts = list(dict.fromkeys(r.context for r in records))
        made = {text: engine.internalize(text) for text in texts}
        another = {text: made[texts[(i + 1) % len(texts)]] for i, text in enumerate(texts)}
        questions, golds = [r.question for r in records], [r.answer for r in records]
        for reader, adapters in (("own adapter", made), ("another's adapter", another)):
            read = answer_tokens(engine, questions, golds, adapters=[adapters[r.context] for r in records])
            results.setdefault(name, {})[reader] = summarise(read)
            print(f"done {name}: {reader}", flush=True)
    if args.json_out:
        args.json_out.write_text(
            json.dumps({"hypernet_fingerprint": engine.hypernet.fingerprint, "results": results}, indent=1)
        )

    table = Table(title=f"where greedy answers leave the gold answer ({engine.hypernet.fingerprint})")
    for column in ("source", "adapter", "answers", "NLL token 1", "NLL later", *BUCKETS, "whole | token 1"):
        table.add_column(column)
    for name, by_reader in results.items():
        for reader, row in by_reader.items():
            cells = [f"{row['nll_first']:.3f}", f"{row['nll_later']:.3f}", *(f"{row[b]:.2f}" for b in BUCKETS)]
            table.add_row(name, reader, str(row["answers"]), *cells, f"{row['whole_given_first']:.2f}")
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
