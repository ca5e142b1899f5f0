"""Commands for the service: ``serve``, ``operator add|change|list`` and ``token
create|list|revoke``.

Does: run the REST API, the inbound SCIM server and the background runner in one process;
let the local administrator manage operator accounts and their API tokens (a new token is
printed once and never again; a password is read from a prompt or standard input, never from
the command line); print the result, or ``--json``.
Does not: hash, store or check credentials itself (``provisor.engine.operators`` does), or
serve anything itself (``provisor.api``).
"""

from __future__ import annotations

import json
import re
import sys
from datetime import datetime, timedelta
from typing import Annotated

import typer

from provisor.cli.options import JsonOption, actor, now, opened, parse_when
from provisor.cli.output import listing, out, print_json
from provisor.engine import operators
from provisor.redaction import unredacted

operator_app = typer.Typer(
    help="Operator accounts of the service: people and clients with roles.\n\n"
    "Example:  provisor operator add alice --role approver --email alice@example.com"
)
token_app = typer.Typer(
    help="API tokens: made with scopes and an expiry, shown once, stored hashed, revocable.\n\n"
    "Example:  provisor token create --operator entra --scope scim --expires 180d"
)

RoleOption = Annotated[
    list[str] | None,
    typer.Option(
        "--role",
        help="A role (repeat): admin, operator, approver, owner, reviewer, auditor, monitor.",
    ),
]
TargetOption = Annotated[
    list[str] | None,
    typer.Option("--target", help="A target this operator owns (repeat; for the owner role)."),
]
PasswordOption = Annotated[
    bool,
    typer.Option(
        "--password", help="Set a password: asked for, or read from standard input when piped."
    ),
]


def _read_password() -> str:
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    first = typer.prompt("Password", hide_input=True)
    if typer.prompt("Again", hide_input=True) != first:
        raise typer.BadParameter("the two passwords differ", param_hint="--password")
    return str(first)


@operator_app.command("add")
def operator_add(
    name: Annotated[str, typer.Argument(help="Sign-in name.")],
    role: RoleOption = None,
    target: TargetOption = None,
    email: Annotated[str | None, typer.Option(help="E-mail (OIDC sign-in matches it).")] = None,
    password: PasswordOption = False,
    oidc_subject: Annotated[
        str | None, typer.Option(help="The OIDC subject that signs in as this operator.")
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Add an operator; without --password they sign in with OIDC or use tokens only.

    Example:  provisor operator add bob --role owner --target payroll --password
    """
    secret = _read_password() if password else None
    with opened() as workspace, workspace.sessions() as session, session.begin():
        made = operators.add_operator(
            session,
            name,
            roles=role or [],
            targets=target or [],
            email=email,
            password=secret,
            oidc_subject=oidc_subject,
            by=actor(None),
            now=now(),
        )
        roles = list(made.roles)
    if json_out:
        print_json({"operator": name, "roles": roles})
        return
    out.print(f"Operator {name} added ({', '.join(roles) or 'no roles'}).")


@operator_app.command("change")
def operator_change(
    name: Annotated[str, typer.Argument(help="Sign-in name.")],
    role: RoleOption = None,
    target: TargetOption = None,
    email: Annotated[str | None, typer.Option(help="New e-mail ('' clears it).")] = None,
    password: PasswordOption = False,
    disable: Annotated[
        bool | None,
        typer.Option("--disable/--enable", help="Disable (revokes every token) or enable."),
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Change an operator's roles, targets, e-mail or password, or disable them.

    Example:  provisor operator change bob --disable
    """
    secret = _read_password() if password else None
    with opened() as workspace, workspace.sessions() as session, session.begin():
        operators.change_operator(
            session,
            name,
            roles=role,
            targets=target,
            email=email,
            password=secret,
            disabled=disable,
            by=actor(None),
            now=now(),
        )
    if json_out:
        print_json({"operator": name, "changed": True})
        return
    out.print(f"Operator {name} changed.")


@operator_app.command("list")
def operator_list(json_out: JsonOption = False) -> None:
    """List operators with their roles and targets.

    Example:  provisor operator list --json
    """
    with opened() as workspace, workspace.sessions() as session:
        found = operators.list_operators(session)
    listing(
        found,
        json_out=json_out,
        as_json=lambda v: v,
        empty="No operators yet: 'provisor operator add NAME --role admin --password'.",
        title="Operators",
        columns=["name", "roles", "targets", "email", "sign-in", "disabled"],
        row=lambda v: (
            v["name"],
            ",".join(v["roles"]),
            ",".join(v["targets"]),
            v["email"],
            "+".join(k for k in ("password", "oidc_subject") if v[k]) or "tokens only",
            "yes" if v["disabled"] else "",
        ),
    )


_SPAN = re.compile(r"^(\d+)([hdw])$")


def parse_expiry(value: str, start: datetime) -> datetime | None:
    """``90d``, ``12h``, ``4w``, a date, or ``never``: when a token stops working."""
    if value == "never":
        return None
    span = _SPAN.match(value)
    if span:
        amount, unit = int(span[1]), span[2]
        return start + timedelta(hours=amount * {"h": 1, "d": 24, "w": 168}[unit])
    return parse_when(value, "--expires")


@token_app.command("create")
def token_create(
    operator: Annotated[str, typer.Option("--operator", help="Whose token it is.")],
    scope: Annotated[
        list[str],
        typer.Option(
            "--scope",
            help="A scope (repeat): read, events, operate, approve, tasks, cases, marks,"
            " evidence, scim, admin, or * for all the operator's roles grant.",
        ),
    ],
    expires: Annotated[str, typer.Option(help="90d, 12h, 4w, an ISO date, or never.")] = "90d",
    name: Annotated[str, typer.Option(help="What the token is for.")] = "api",
    json_out: JsonOption = False,
) -> None:
    """Make an API token; it is printed once and only its hash is kept.

    Example:  provisor token create --operator entra --scope scim --expires 180d --name Entra
    """
    start = now()
    with opened() as workspace, workspace.sessions() as session, session.begin():
        secret, token = operators.create_token(
            session,
            operator,
            name=name,
            scopes=scope,
            expires_at=parse_expiry(expires, start),
            by=actor(None),
            now=start,
        )
        scopes = [str(s) for s in token.scopes]
        expiry = token.expires_at.isoformat() if token.expires_at else None
        made = {"id": token.id, "operator": operator, "scopes": scopes, "expires_at": expiry}
    shown = unredacted(sys.stdout)  # the token is printed on purpose, this once
    if json_out:
        shown.write(json.dumps(made | {"token": secret}) + "\n")
        return
    out.print(f"Token {made['id']} for {operator} ({', '.join(scopes)}),", end=" ")
    out.print(f"expires {expiry or 'never'}. Keep it now; it is not shown again:")
    out.file.flush()
    shown.write(secret + "\n")


@token_app.command("list")
def token_list(
    operator: Annotated[str | None, typer.Option(help="Only this operator's.")] = None,
    every: Annotated[bool, typer.Option("--all", help="Include revoked and expired.")] = False,
    json_out: JsonOption = False,
) -> None:
    """List API tokens with their scopes, expiry and last use (never the tokens themselves).

    Example:  provisor token list --operator entra
    """
    with opened() as workspace, workspace.sessions() as session:
        found = operators.list_tokens(session, operator=operator, every=every, now=now())
    listing(
        found,
        json_out=json_out,
        as_json=lambda v: v,
        empty="No tokens.",
        title="Tokens",
        columns=["id", "operator", "name", "prefix", "scopes", "expires", "last used", "revoked"],
        row=lambda v: (
            v["id"],
            v["operator"],
            v["name"],
            v["prefix"] + "…",
            ",".join(v["scopes"]),
            v["expires_at"] or "never",
            v["last_used_at"] or "never",
            v["revoked_at"] or "",
        ),
    )


@token_app.command("revoke")
def token_revoke(
    token: Annotated[int, typer.Argument(help="Token number ('provisor token list').")],
    json_out: JsonOption = False,
) -> None:
    """Revoke a token: it stops working at once.

    Example:  provisor token revoke 7
    """
    with opened() as workspace, workspace.sessions() as session, session.begin():
        operators.revoke_token(session, token, by=actor(None), now=now())
    if json_out:
        print_json({"token": token, "revoked": True})
        return
    out.print(f"Token {token} revoked.")


def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    no_runner: Annotated[
        bool, typer.Option("--no-runner", help="Serve only; run no background cycles.")
    ] = False,
) -> None:
    """Run the REST API (/api/v1), the inbound SCIM server (/scim/v2) and the background
    runner in one process. Settings: the 'service' section of provisor.yaml.

    Example:  provisor serve --port 8400
    """
    from provisor.api.server import run_server

    with opened() as workspace:
        run_server(workspace, host=host, port=port, runner=not no_runner)


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.add_typer(operator_app, name="operator")
    app.add_typer(token_app, name="token")
    app.command()(serve)
