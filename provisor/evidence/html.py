"""The human-readable page of a leaver's evidence bundle.

Does: render a bundle (the dictionary written as JSON) as one self-contained HTML page — the
identity, the outcome, per target and layer the state found and why, the accounts read, the
operation history and manual tasks, and the audit-chain head — every value escaped.
Does not: compute anything; the JSON file is the evidence, the page shows it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from html import escape
from typing import Any

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: left;
         vertical-align: top; font-size: 0.9rem; }
th { background: #f3f3f3; }
code { font-size: 0.85rem; }
.verified-removed { background: #e3f6e3; }
.still-present { background: #fbe0e0; font-weight: bold; }
.unverifiable { background: #fff4d6; }
.kept-by-policy { background: #e8eefb; }
.pass { color: #176117; } .fail { color: #a11; } .incomplete { color: #8a5a00; }
"""


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return ", ".join(_text(v) for v in value)
    return escape(str(value))


def _table(
    columns: Sequence[str], rows: Iterable[Sequence[Any]], classes: Sequence[str] = ()
) -> str:
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = []
    for index, row in enumerate(rows):
        css = f' class="{escape(classes[index])}"' if index < len(classes) else ""
        body.append(f"<tr{css}>" + "".join(f"<td>{_text(v)}</td>" for v in row) + "</tr>")
    if not body:
        return "<p>None.</p>"
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _target(section: Mapping[str, Any]) -> str:
    parts = [
        f"<h2>{escape(section['target'])}</h2>",
        "<p>"
        + escape(
            f"{section['category']} ({section['channel']}), owner {section['owner']}, "
            f"leaver action {section['leaver_action']}"
        )
        + "</p>",
    ]
    if section.get("error"):
        parts.append(f"<p><strong>{escape(section['error'])}</strong></p>")
    layers = section["layers"]
    parts.append(
        _table(
            ["layer", "state", "why"],
            [(x["layer"], x["state"], x["why"]) for x in layers],
            [x["state"] for x in layers],
        )
    )
    if section["accounts"]:
        keys = list(section["accounts"][0])
        parts.append("<h3>Accounts found</h3>")
        parts.append(_table(keys, [[a.get(k) for k in keys] for a in section["accounts"]]))
    if section["notes"]:
        parts.append("<ul>" + "".join(f"<li>{_text(n)}</li>" for n in section["notes"]) + "</ul>")
    if section["tasks"]:
        parts.append("<h3>Manual tasks</h3>")
        keys = list(section["tasks"][0])
        parts.append(_table(keys, [[t.get(k) for k in keys] for t in section["tasks"]]))
    parts.append("<h3>Operation history</h3>")
    columns = ["id", "kind", "entitlement", "status", "created_at", "updated_at"]
    columns += ["verified_at", "attempts", "last_error"]
    parts.append(_table(columns, [[o.get(k) for k in columns] for o in section["operations"]]))
    return "\n".join(parts)


def render(bundle: Mapping[str, Any], sha256: str, json_name: str) -> str:
    """The page for ``bundle``, naming the JSON file it shows and that file's SHA-256."""
    who = bundle["identity"]
    chain = bundle["audit"]
    result = bundle["outcome"]
    counts = ", ".join(f"{v} {k}" for k, v in bundle["counts"].items())
    failures = "".join(f"<li>{_text(f)}</li>" for f in bundle["failures"])
    chain_state = (
        "intact"
        if chain["chain_verified"]
        else f"FAILED verification: {chain['chain_problem'] or ''}"
    )
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>Leaver evidence: {escape(who['id'])}</title>",
            f"<style>{_STYLE}</style></head><body>",
            f"<h1>Leaver evidence: {escape(who['id'])} {_text(who.get('name'))}</h1>",
            _table(
                ["identity", "email", "state", "terminated at", "generated at", "by", "policy"],
                [
                    (
                        who["id"],
                        who.get("email"),
                        who.get("state"),
                        who.get("terminated_at"),
                        bundle["generated_at"],
                        bundle["generated_by"],
                        bundle["policy_digest"][:16],
                    )
                ],
            ),
            f'<p>Outcome: <strong class="{escape(result)}">{escape(result)}</strong> '
            f"({escape(counts)})</p>",
            f"<ul>{failures}</ul>" if failures else "",
            "<p>Audit chain head at this moment: event "
            f"<code>{escape(str(chain['head_seq']))}</code>, hash "
            f"<code>{escape(chain['head_hash'])}</code>; chain {escape(chain_state)}.</p>",
            f"<p>Evidence file <code>{escape(json_name)}</code>, SHA-256 "
            f"<code>{escape(sha256)}</code> (recorded in the audit log as "
            "<code>evidence.leaver</code>).</p>",
            *(_target(section) for section in bundle["targets"]),
            "</body></html>",
            "",
        ]
    )
