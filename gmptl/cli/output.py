"""Tables the commands print: a manifest's summary and the fold table (``prepare``, ``folds``, ``run``)."""

from __future__ import annotations


def format_summary(s: dict) -> str:
    lines = [
        f"utterances: {s['n_utterances']}   hours: {s['hours']:.3f}   speakers: {len(s['speakers'])}   "
        f"genders: F {s['genders'].get('F', 0)} / M {s['genders'].get('M', 0)}   bad (left out): {len(s['bad'])}",
        "per class:   "
        + ("  ".join(f"{k} {v}" for k, v in s["per_class"].items()) or "none (unlabeled audio)"),
        "per session: " + "  ".join(f"{k} {v}" for k, v in s["per_session"].items()),
    ]
    return "\n".join(lines)


def format_folds(rows: list[dict]) -> str:
    head = f"{'fold':>4}  {'name':<12} {'test speakers':<24} {'validation':<18} {'n_train':>7} {'n_val':>6} {'n_test':>6}"
    out = [head, "-" * len(head)]
    for r in rows:
        out.append(
            f"{r['fold']:>4}  {r['name']:<12} {','.join(r['test_speakers'])[:24]:<24} "
            f"{','.join(r['validation_speakers'])[:18]:<18} {r['n_train']:>7} {r['n_validation']:>6} {r['n_test']:>6}"
        )
    return "\n".join(out)
