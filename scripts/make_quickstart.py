"""Generate the offline quickstart's data (shipped in smolmac/quickstart/; rerun to regenerate):

    python scripts/make_quickstart.py            # writes smolmac/quickstart/*.txt|jsonl

The task is one-digit arithmetic with exact answers: "What is 7 + 5?" -> "7 + 5 = 12" (the
answer restates the sum, the way the pretraining text writes it). Every text is generated here
from templates (licence-clean, Apache-2.0 like the code). The facts a op b = c (a, b in 0..9,
op + or -, a >= b for -) are split once: the held-out facts appear in no training file at all,
so answering them needs arithmetic the model worked out, not a sentence it read.

- corpus.txt: pretraining documents (blank-line separated) stating the training facts in
  several phrasings (equations, sentences, small stories) plus counting.
- sft.jsonl: {prompt, completion} questions over the training facts, in four phrasings.
- preference.jsonl: {prompt, chosen, rejected}: the right equation vs a typical mistake (a
  result off by one or two, the other operation's result, or an operand copied wrong), over
  the training facts.
- eval.jsonl / eval_preference.jsonl: the held-out facts, as questions and as pairs.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "smolmac" / "quickstart"
NAMES = ["Ada", "Ben", "Cleo", "Dan", "Eva", "Finn", "Gia", "Hugo", "Ines", "Jon", "Kai", "Lena", "Milo", "Nora", "Omar", "Pia", "Rosa", "Sam", "Tess", "Ugo"]
THINGS = {"apples": "apple", "books": "book", "coins": "coin", "stones": "stone", "shells": "shell", "cards": "card",
          "marbles": "marble", "pens": "pen", "cups": "cup", "stamps": "stamp", "seeds": "seed", "boxes": "box"}
QUESTIONS = ["What is {a} {op} {b}?", "Compute {a} {op} {b}.", "How much is {a} {op} {b}?", "Please work out {a} {op} {b}."]


def all_facts(top: int) -> list[tuple[int, str, int, int]]:
    out = []
    for a in range(top + 1):
        for b in range(top + 1):
            out.append((a, "+", b, a + b))
            if a >= b:
                out.append((a, "-", b, a - b))
    return out


def answer(a: int, op: str, b: int, c: int) -> str:
    return f"{a} {op} {b} = {c}"


def _n(count: int, plural: str) -> str:
    return f"{count} {THINGS[plural] if count == 1 else plural}"


def sentence(rng: random.Random, a: int, op: str, b: int, c: int) -> str:
    word = "plus" if op == "+" else "minus"
    name, thing = rng.choice(NAMES), rng.choice(list(THINGS))
    forms = [f"{a} {op} {b} = {c}."] * 3 + [f"{a} {word} {b} is {c}.", f"{a} {word} {b} equals {c}."]
    if op == "+":
        forms += [f"If you add {b} to {a}, you get {c}.", f"{name} had {_n(a, thing)} and got {b} more. Now {name} has {_n(c, thing)}."]
    else:
        forms += [f"If you take {b} away from {a}, you get {c}.", f"{name} had {_n(a, thing)} and gave away {b}. Now {name} has {_n(c, thing)}."]
    return rng.choice(forms)


def counting(rng: random.Random, top: int) -> str:
    start = rng.randint(0, 2 * top - 4)
    return f"Counting up from {start}: " + ", ".join(str(x) for x in range(start, min(start + rng.randint(4, 8), 2 * top + 1))) + "."


def corpus(rng: random.Random, facts: list, repeats: int, top: int) -> list[str]:
    """Documents of 3-8 sentences; every fact is stated `repeats` times in all."""
    pool = [f for f in facts for _ in range(repeats)]
    rng.shuffle(pool)
    docs, i = [], 0
    while i < len(pool):
        n = rng.randint(3, 8)
        parts = [sentence(rng, *f) for f in pool[i : i + n]]
        if rng.random() < 0.2:
            parts.insert(rng.randint(0, len(parts)), counting(rng, top))
        docs.append(" ".join(parts))
        i += n
    return docs


def rejected(rng: random.Random, a: int, op: str, b: int, c: int) -> str:
    """A typical mistake: a near-miss result, or an operand copied wrong (with its own result)."""
    if rng.random() < 0.3:
        b2 = rng.choice([x for x in (b - 1, b + 1) if 0 <= x <= 9 and (op == "+" or x <= a)] or [b])
        if b2 != b:
            return answer(a, op, b2, a + b2 if op == "+" else a - b2)
    return answer(a, op, b, near_miss(rng, a, op, b, c))


def near_miss(rng: random.Random, a: int, op: str, b: int, c: int) -> int:
    options = [c + 1, c - 1, c + 2, c - 2, a - b if op == "+" else a + b]
    return rng.choice([x for x in options if x >= 0 and x != c])


def write_jsonl(path: Path, rows: list[dict]):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def main(argv=None):
    ap = argparse.ArgumentParser(description="Generate the quickstart data.")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--top", type=int, default=9, help="largest operand")
    ap.add_argument("--repeats", type=int, default=120, help="times each training fact is stated in the corpus")
    ap.add_argument("--held-out", type=float, default=0.2, help="fraction of facts held out for evaluation")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    facts = all_facts(args.top)
    rng.shuffle(facts)
    n_eval = round(len(facts) * args.held_out)
    held, train = sorted(facts[:n_eval]), sorted(facts[n_eval:])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    docs = corpus(rng, train, args.repeats, args.top)
    (out / "corpus.txt").write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    sft = [{"prompt": q.format(a=a, op=op, b=b), "completion": answer(a, op, b, c)} for a, op, b, c in train for q in rng.sample(QUESTIONS, 2)]
    rng.shuffle(sft)
    write_jsonl(out / "sft.jsonl", sft)
    pairs = [{"prompt": rng.choice(QUESTIONS).format(a=a, op=op, b=b), "chosen": answer(a, op, b, c), "rejected": rejected(rng, a, op, b, c)}
             for a, op, b, c in train for _ in range(2)]
    rng.shuffle(pairs)
    write_jsonl(out / "preference.jsonl", pairs)
    ask = QUESTIONS[0]
    write_jsonl(out / "eval.jsonl", [{"prompt": ask.format(a=a, op=op, b=b), "completion": answer(a, op, b, c)} for a, op, b, c in held])
    write_jsonl(out / "eval_preference.jsonl", [
        {"prompt": ask.format(a=a, op=op, b=b), "chosen": answer(a, op, b, c), "rejected": rejected(rng, a, op, b, c)} for a, op, b, c in held
    ])
    print(f"{out}: {len(docs)} documents ({sum(map(len, docs)):,} chars), {len(train)} training facts, {len(held)} held out, "
          f"{len(sft)} instructions, {len(pairs)} preference pairs")


if __name__ == "__main__":
    main()
