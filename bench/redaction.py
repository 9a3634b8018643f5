"""Measure PII redaction: precision, recall and F1 per type, then speed.

The quality figures come from the labelled lines in
``tests/safety/data/pii_lines.jsonl``; a prediction counts only when its type, start and
end equal a label's. The speed figures time ``Redactor.redact`` in this process, one
thread, on four inputs:

- **prompt, no PII**: about 1 KB of English prose with a few numbers (quantities, a
  date, a version) and nothing to redact, the common case for the gateway.
- **prompt, 5 PII values**: about 1 KB of prose with an e-mail address, a phone number,
  a card number, an IP address and an SSN.
- **labelled lines**: every line of the labelled set, one call per line.
- **number-dense document**: the labelled lines joined into one text of about 9 KB.
  Most lines contain digits, so this is the slow case for the phone matcher.

Usage: ``make bench`` or ``.venv/bin/python bench/redaction.py --seconds 2``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

from tickets_auth import git_commit

from stockade.safety.evaluation import Evaluation, Label, Score, evaluate, load_labelled
from stockade.safety.redaction import SUPPORTED_TYPES, Redactor

ROOT = Path(__file__).resolve().parent.parent
LABELLED_LINES = ROOT / "tests" / "safety" / "data" / "pii_lines.jsonl"
RESULTS_FILE = Path(__file__).resolve().parent / "results" / "redaction.md"
TARGET_MICROSECONDS_PER_KB = 1000

PROMPT_CLEAN = (
    "You are helping the support team of an online shop. A customer wrote that their "
    "order of 3 garden chairs arrived on 2024-06-14 with one chair missing and the box "
    "torn open at one corner. They asked whether they should keep the other two chairs, "
    "and how long a replacement would take, because they have guests coming in 10 days. "
    "Our policy allows replacements within 30 days and refunds within 14 days, and the "
    "warehouse usually ships within 2 working days. Please draft a short, friendly reply "
    "that apologises, explains both options, and asks the customer to send a photo of "
    "the damaged box so that we can file a claim with the carrier. Keep it under 150 "
    "words, avoid legal language, and do not promise a delivery date. Version 2.4 of the "
    "style guide asks for a greeting with the customer's first name and a closing line "
    "with the team name. The reply will be reviewed by a team lead before it is sent, so "
    "mark any sentence you are unsure about with a question in square brackets. Also "
    "suggest one sentence we could add to the order confirmation e-mail template so that "
    "customers know how to report missing items themselves in future orders."
)
PROMPT_WITH_PII = (
    "Summarise this support ticket for the billing team in three bullet points. The "
    "customer, writing from alice.moreau@example.com, says she was charged twice for her "
    "annual plan on 2024-06-14. She paid with the card 4111 1111 1111 1111 and wants the "
    "second charge refunded to the same card. She also asked us to call her back on "
    "(202) 555-0143 between 9 and 11 in the morning, because she cannot read e-mail at "
    "work. Our logs show two checkout sessions eleven seconds apart, both from the "
    "address 198.51.100.7, which suggests a double click on the pay button rather than "
    "fraud. For the tax form she sent her SSN 123-45-6789, which we must not store in "
    "the ticket. Please list what happened, what we should refund, and which team "
    "should remove the SSN from the ticket history. Keep the summary neutral and short, "
    "and note that the customer has been with us since 2019 and has never disputed a "
    "charge before. Mention that the refund takes 5 to 10 working days to appear."
)


def time_calls(call: Callable[[], object], seconds: float) -> list[float]:
    """Run ``call`` repeatedly for about ``seconds`` and return each duration in seconds."""
    for _ in range(20):
        call()

    durations: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        call()
        durations.append(time.perf_counter() - started)
    return durations


def quality_table(evaluation: Evaluation) -> list[str]:
    rows = [
        "| type | labelled | found | correct | precision | recall | F1 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for entity_type in sorted(SUPPORTED_TYPES):
        score = evaluation.scores.get(entity_type)
        if score is not None:
            rows.append(_quality_row(entity_type, score))
    rows.append(_quality_row("**all**", evaluation.total))
    return rows


def _quality_row(name: str, score: Score) -> str:
    labelled = score.true_positives + score.false_negatives
    predicted = score.true_positives + score.false_positives
    return (
        f"| {name} | {labelled} | {predicted} | {score.true_positives} "
        f"| {score.precision:.3f} | {score.recall:.3f} | {score.f1:.3f} |"
    )


def _list_labels(labels: list[tuple[str, Label]]) -> list[str]:
    if not labels:
        return ["- none"]
    return [f"- {label[0]}: `{text[label[1] : label[2]]}` in {text!r}" for text, label in labels]


def speed_table(redactor: Redactor, seconds: float) -> list[str]:
    lines = [line.text for line in load_labelled(LABELLED_LINES)]
    document = "\n".join(lines)
    inputs: list[tuple[str, list[str]]] = [
        ("prompt, no PII", [PROMPT_CLEAN]),
        ("prompt, 5 PII values", [PROMPT_WITH_PII]),
        (f"labelled lines ({len(lines)} calls per pass)", lines),
        ("number-dense document", [document]),
    ]
    rows = [
        "| input | bytes per call | calls | median µs per call | p99 µs per call "
        "| µs per KB | calls per s | KB per s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]

    for name, texts in inputs:
        size = sum(len(text.encode()) for text in texts)
        durations = time_calls(lambda texts=texts: [redactor.redact(t) for t in texts], seconds)
        per_call = [duration / len(texts) for duration in durations]
        median = statistics.median(per_call)
        p99 = statistics.quantiles(per_call, n=100)[98] if len(per_call) >= 100 else max(per_call)
        total_seconds = sum(durations)
        kilobytes = size * len(durations) / 1024
        rows.append(
            f"| {name} | {size / len(texts):.0f} | {len(durations) * len(texts)} "
            f"| {median * 1e6:.0f} | {p99 * 1e6:.0f} "
            f"| {median * 1e6 / (size / len(texts) / 1024):.0f} "
            f"| {len(durations) * len(texts) / total_seconds:,.0f} "
            f"| {kilobytes / total_seconds:,.0f} |"
        )

    return rows


def describe_environment() -> list[str]:
    return [
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}, commit {git_commit()}",
        f"- machine: {platform.machine()}, {platform.system()} {platform.release()}",
        f"- Python {platform.python_version()}, phonenumbers {version('phonenumbers')},"
        f" python-stdnum {version('python-stdnum')}",
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--seconds",
        type=float,
        default=3.0,
        help="how long to time each speed input, in seconds (default 3)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    redactor = Redactor()

    evaluation = evaluate(redactor, load_labelled(LABELLED_LINES))
    report = [
        "# PII redaction",
        "",
        *describe_environment(),
        "",
        f"Quality on `{LABELLED_LINES.relative_to(ROOT)}`:",
        "",
        *quality_table(evaluation),
        "",
        "Missed labels:",
        "",
        *_list_labels(evaluation.false_negatives),
        "",
        "Wrong predictions:",
        "",
        *_list_labels(evaluation.false_positives),
        "",
        f"Speed, one thread, {args.seconds:g} s per input:",
        "",
        *speed_table(redactor, args.seconds),
        "",
        f"Target: at most {TARGET_MICROSECONDS_PER_KB} µs per KB for a typical prompt.",
    ]

    text = "\n".join(report) + "\n"
    print(text)
    RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_FILE.write_text(text, encoding="utf-8")
    print(f"Wrote {RESULTS_FILE}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
