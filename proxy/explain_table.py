"""`ctxwarden explain`'s report as a table for people (``--json`` prints the
report itself): one row per message, then the decision, the tokens and the
estimated input cost with the provider's prompt cache priced in."""

from __future__ import annotations

COLUMNS = ("#", "role", "tier", "action", "tokens before -> after", "reason")


def render_table(report: dict, dialect: str, told_by: str) -> str:
    """The report of :func:`ctxwarden.pipeline.explain_turn` as text;
    ``told_by`` says where ``dialect`` came from."""
    rows = [(str(m["index"]), m["role"], m["tier"], m["action"],
             f"{m['tokens_before']:,} -> {m['tokens_after']:,}", m["reason"]) for m in report["messages"]]
    if report["note"]:
        rows.append(("+", "note", "supporting", "added", f"0 -> {report['note_tokens']:,}",
                     "ctxwarden's note of the compacted messages, after the pinned head"))
    if report["recalled"]:
        rows.append(("+", "recall", "cache", "added", f"0 -> {report['recalled_tokens']:,}",
                     "original lines of compacted messages that the latest turn names"))
    lines = [f"dialect: {dialect} ({told_by})", "", *_aligned([COLUMNS, *rows]), ""]
    lines.append(f"decision: {report['decision']} - {report['reason']}")
    if report["warning"]:
        lines.append(f"warning:  {report['warning']}")
    before, after = report["tokens_before"], report["tokens_after"]
    lines.append(f"tokens:   {before:,} -> {after:,}{_change(before, after)}")
    lines.append(_cost_line(report))
    return "\n".join(lines) + "\n"


def _aligned(rows: list[tuple[str, ...]]) -> list[str]:
    """Columns padded to their widest cell; the token column right-aligned, the reason left ragged."""
    widths = [max(len(row[c]) for row in rows) for c in range(len(COLUMNS) - 1)]
    out = []
    for row in rows:
        cells = [cell.rjust(w) if c in (0, 4) else cell.ljust(w) for c, (cell, w) in enumerate(zip(row, widths))]
        out.append("  ".join([*cells, row[-1]]).rstrip())
    return out


def _change(before: int, after: int) -> str:
    return f" ({(after - before) / before:+.0%})" if before and after != before else ""


def _cost_line(report: dict) -> str:
    pricing = report["pricing"]
    priced = f"{pricing['cache']} cache: read {pricing['read']:g}x, write {pricing['write']:g}x"
    sent, passthrough = report["cost_sent"], report["cost_passthrough"]
    if not passthrough:
        return f"cost:     as passthrough: the request is sent as it came ({priced})"
    return (f"cost:     sent {sent:,.1f} vs passthrough {passthrough:,.1f}{_change(passthrough, sent)} "
            f"input-token units, the provider's prompt cache priced in ({priced})")
