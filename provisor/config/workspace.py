"""The workspace configuration file, ``provisor.yaml``.

Does: define and validate the workspace settings — where the policy lives, the HR feeds (column
mappings, day rules), the mass-change guard, lifecycle windows, time zones, the secrets file —
and write the starter configuration and policy that ``provisor init`` puts in a new workspace.
Does not: open the database or load the policy (``provisor.engine.workspace`` does both).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from provisor.domain import days, yaml_limits
from provisor.domain.scim_people import IDENTITY_FROM, IdentitySource
from provisor.errors import ConfigError
from provisor.sources.hr import FeedMapping

CONFIG_FILE = "provisor.yaml"


class GuardSettings(BaseModel):
    """Mass-change guard: how many deprovisioning transitions one import or tick may apply."""

    model_config = ConfigDict(extra="forbid")

    max_share: float = Field(default=0.10, gt=0, le=1)
    max_count: int = Field(default=50, ge=1)
    # Fewer affected identities than this are never held, whatever their share: in a small
    # population one leaver is not a mass change.
    min_count: int = Field(default=5, ge=1)
    # sources of single changes (inbound SCIM, events posted to the API) are judged by the
    # leavers and suspensions they made within this many minutes, with each new one
    window_minutes: int = Field(default=60, ge=1, le=7 * 24 * 60)


class LifecycleSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rescind_window_days: int = Field(default=30, ge=0, le=365)
    # a rescinded termination gives back exactly what was held when it took effect; that is
    # kept this many days after the rescind (or until the person's next change), then today's
    # policy decides. 0: today's policy decides at once.
    rescind_restore_days: int = Field(default=30, ge=0, le=365)


class SourceSettings(BaseModel):
    """Feeds that speak for overlapping people (``provisor.engine.authorities``): which
    attributes say two feeds' rows are one person, and whose word counts for each attribute."""

    model_config = ConfigDict(extra="forbid")

    # identity attributes that identify one person across feeds, e.g. [email, national_id_hash];
    # none: each feed is a population of its own (a person in two feeds is two identities)
    match: list[str] = Field(default_factory=list)
    # attribute -> feeds, first first; "*" for every attribute not named; "status" decides
    # whether and when a person starts and leaves (status, start_date, end_date). Feeds not
    # named follow, in the order they are configured.
    precedence: dict[str, list[str]] = Field(default_factory=dict)


class TimeSettings(BaseModel):
    """Whose local time a date means (``provisor.domain.days``): dates in feeds, on the command
    line and in the API are days in the person's zone; an instant with an offset is taken as
    given."""

    model_config = ConfigDict(extra="forbid")

    zone: str = "UTC"  # the workspace's IANA time zone, e.g. America/Los_Angeles
    # an identity attribute holding each person's zone (its value an IANA name), first
    zone_attribute: str | None = None
    # else a person's location (the location attribute, any case) to a zone
    locations: dict[str, str] = Field(default_factory=dict)

    @field_validator("zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        days.zone(value)
        return value.strip()

    @field_validator("locations")
    @classmethod
    def _located(cls, value: dict[str, str]) -> dict[str, str]:
        bad: list[str] = []
        for place, name in value.items():
            try:
                days.zone(name)
            except days.TimeError:
                bad.append(f"{place}: {name!r}")
        if bad:
            raise ValueError(f"unknown time zone(s) {', '.join(bad)}; expected IANA names")
        return {place.strip(): name.strip() for place, name in value.items()}

    def zones(self) -> days.Zones:
        return _zones(self.zone, self.zone_attribute, tuple(sorted(self.locations.items())))


@lru_cache(maxsize=16)
def _zones(
    default: str, attribute: str | None, locations: tuple[tuple[str, str], ...]
) -> days.Zones:
    return days.Zones(default, attribute, locations)


class RunnerSettings(BaseModel):
    """How runners share the journal (``provisor.engine.runner.leases``)."""

    model_config = ConfigDict(extra="forbid")

    # a runner holds the accounts it works on for this long, renewed every third of it; one
    # that died loses them this long after its last renewal, and another runner takes over
    lease_seconds: int = Field(default=30, ge=3, le=3600)
    # ``provisor worker`` processes run the journal (PostgreSQL only): the service records
    # changes and puts a cycle in the job queue instead of applying in its own process
    workers: bool = False
    # how often the workers' sweeper looks for work with no job (a dead worker's accounts
    # whose leases ran out, retries and delayed steps come due): at most this much after
    sweep_seconds: int = Field(default=5, ge=1, le=59)


class AuditSettings(BaseModel):
    """Signed checkpoints of the audit chain (``provisor.evidence.checkpoints``)."""

    model_config = ConfigDict(extra="forbid")

    checkpoints: bool = True
    # the Ed25519 private key that signs checkpoints, kept outside the database: a file
    # (relative to the workspace, made with mode 0600 when missing) unless PROVISOR_AUDIT_KEY
    # holds the key itself (base64 of its 32 bytes)
    signing_key: str = "audit-signing.key"
    # every checkpoint is appended here (relative to the workspace), the copy verification trusts
    checkpoint_file: str = "audit-checkpoints.jsonl"
    syslog: str | None = None  # also send each checkpoint to syslog: /dev/log or HOST:PORT (UDP)
    http: str | None = None  # also POST each checkpoint as JSON to this URL
    every_seconds: int = Field(default=60, ge=1, le=3600)


class SmtpSettings(BaseModel):
    """The mail server notices go through."""

    model_config = ConfigDict(extra="forbid")

    host: str
    port: int = Field(default=25, ge=1, le=65535)
    sender: str = "provisor@localhost"
    starttls: bool = False
    username: str | None = None
    # the password is never written here: it is read from this environment variable
    password_env: str | None = "PROVISOR_SMTP_PASSWORD"


class WebhookSettings(BaseModel):
    """A URL that receives each notice as signed JSON."""

    model_config = ConfigDict(extra="forbid")

    url: str
    # the signing secret is read from this environment variable (never written here)
    secret_env: str | None = None
    kinds: list[str] = Field(default_factory=list)  # only these kinds; empty: all
    # one POST per this many minutes carrying every notice waiting for the hook; 0: each
    # notice its own POST at once
    digest_minutes: int = Field(default=0, ge=0, le=7 * 24 * 60)


class NotificationSettings(BaseModel):
    """Who hears that something waits for them (``provisor.engine.notify``)."""

    model_config = ConfigDict(extra="forbid")

    smtp: SmtpSettings | None = None
    webhooks: list[WebhookSettings] = Field(default_factory=list)
    # one mail per person per this many minutes, listing all that waits; 0: each at once
    digest_minutes: int = Field(default=60, ge=0, le=7 * 24 * 60)
    overdue_every_hours: int = Field(default=24, ge=1, le=24 * 30)  # overdue tasks again
    max_attempts: int = Field(default=8, ge=1, le=100)


class OidcSettings(BaseModel):
    """Sign-in through an OpenID Connect provider (authorization code flow with PKCE)."""

    model_config = ConfigDict(extra="forbid")

    issuer: str  # the provider's issuer URL; its discovery document is read from there
    client_id: str
    # the client secret is never written here: it is read from this environment variable
    client_secret_env: str = "PROVISOR_OIDC_CLIENT_SECRET"
    # this service's callback as registered with the provider: .../api/v1/oidc/callback
    redirect_url: str
    scopes: list[str] = Field(default_factory=lambda: ["openid", "email", "profile"])


class ScimInboundSettings(BaseModel):
    """The inbound SCIM 2.0 server at /scim/v2 (``docs/scim-inbound.md``)."""

    model_config = ConfigDict(extra="forbid")

    feed: str = "scim"  # the source name its events carry, and its mapping's name
    # strict: refuse what the SCIM interoperability profile forbids instead of accepting the
    # shapes identity providers are known to send (capitalised ops, "True"/"False" strings)
    strict: bool = False
    page_size: int = Field(default=100, ge=1, le=1000)  # the most a list returns at once
    # where the identity a new User feeds comes from: the first of these it has a value for
    # (employeeNumber is the enterprise extension's); kept for the User's life
    identity_from: list[IdentitySource] = Field(
        default_factory=lambda: list(IDENTITY_FROM), min_length=1
    )


class ServiceSettings(BaseModel):
    """``provisor serve``: the REST API, inbound SCIM and the background runner."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=8400, ge=1, le=65535)
    session_hours: float = Field(default=12, gt=0, le=24 * 7)  # sign-in tokens live this long
    # requests per second one token may make (a burst of twice as many is allowed), and how
    # many requests may be in flight at once over all tokens; beyond either: 429 Retry-After
    rate_per_token: float = Field(default=1000, gt=0)
    max_in_flight: int = Field(default=64, ge=1)
    cycle_seconds: float = Field(default=30, gt=0)  # the background runner's interval
    max_upload_mb: int = Field(default=512, ge=1)
    oidc: OidcSettings | None = None
    scim: ScimInboundSettings = Field(default_factory=ScimInboundSettings)


class WorkspaceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    policy: list[str] = Field(default_factory=lambda: ["policy"])
    feeds: dict[str, FeedMapping] = Field(default_factory=lambda: {"hr": FeedMapping()})
    sources: SourceSettings = Field(default_factory=SourceSettings)
    guard: GuardSettings = Field(default_factory=GuardSettings)
    lifecycle: LifecycleSettings = Field(default_factory=LifecycleSettings)
    time: TimeSettings = Field(default_factory=TimeSettings)
    runner: RunnerSettings = Field(default_factory=RunnerSettings)
    secrets_file: str = "secrets.enc"
    # a credential that would cross the network unencrypted (plain http://, ldap:// without
    # StartTLS) is a warning; with require_tls, an error that keeps the target closed
    require_tls: bool = False
    audit: AuditSettings = Field(default_factory=AuditSettings)
    service: ServiceSettings = Field(default_factory=ServiceSettings)
    notifications: NotificationSettings = Field(default_factory=NotificationSettings)

    @model_validator(mode="after")
    def _known_feeds(self) -> WorkspaceConfig:
        """Precedence names only configured feeds."""
        for attribute, feeds in self.sources.precedence.items():
            for feed in feeds:
                if feed not in self.feeds:
                    known = ", ".join(self.feeds) or "none"
                    raise ValueError(
                        f"sources.precedence.{attribute}: no feed {feed!r} (feeds: {known})"
                    )
        return self


def load_config(workspace: Path) -> WorkspaceConfig:
    """Read ``provisor.yaml`` of ``workspace``; a missing file means all defaults."""
    path = workspace / CONFIG_FILE
    if not path.exists():
        return WorkspaceConfig()
    try:
        raw: Any = yaml_limits.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    try:
        return WorkspaceConfig.model_validate(raw)
    except ValidationError as exc:
        lines = [
            f"{path} {'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        ]
        raise ConfigError("\n".join(lines)) from exc


STARTER_CONFIG = """\
# Provisor workspace settings. Every key is optional; these are the defaults.
policy: [policy]            # files or folders of policy YAML, relative to this file
secrets_file: secrets.enc   # encrypted with PROVISOR_SECRETS_KEY; see docs/policy.md
require_tls: false          # true: refuse credentials over plain http:// or ldap:// without TLS

feeds:
  hr:                       # provisor import FILE --feed hr
    mode: snapshot          # snapshot: the file is the whole population; events: one change a row
    format: auto            # csv or jsonl; auto decides by the file extension
    columns:                # provisor field: column in your file (unlisted fields keep their name)
      id: employee_id
      name: name
      email: email
      department: department
      title: title
      location: location
      cost_centre: cost_centre
      manager: manager_id
      employment_type: employment_type
      start_date: start_date
      end_date: end_date
      status: status
    start_at: start_of_day  # a start_date begins then, locally: start_of_day or a time (09:00)
    end_at: end_of_day      # an end_date is the last working day: access ends at its end
                            # (end_of_day), its start (start_of_day) or a local time (18:00)

sources:                    # several feeds for one population (see docs/hr-feeds.md)
  match: []                 # attributes that make two feeds' rows one person, e.g. [email]
  precedence: {}            # attribute -> feeds, first first; "*" the rest; "status" leavers

guard:                      # mass-change guard for imports and ticks
  max_share: 0.10           # hold if more than 10 % of active identities would be deprovisioned
  max_count: 50             # ... or more than 50 of them
  min_count: 5              # never hold fewer than this many

lifecycle:
  rescind_window_days: 30   # a termination can be rescinded this long after it took effect
  rescind_restore_days: 30  # a rescind gives back exactly what was held at the termination,
                            # kept this long (or to the next change); then today's policy

time:                       # dates are days in the person's local time
  zone: UTC                 # the workspace's IANA zone, e.g. America/Los_Angeles
  zone_attribute: null      # an identity attribute holding each person's zone (IANA name)
  locations: {}             # else location -> zone, e.g. {London: Europe/London}

audit:                      # signed checkpoints of the audit chain; see docs/evidence.md
  checkpoints: true
  signing_key: audit-signing.key          # or PROVISOR_AUDIT_KEY; kept out of the database
  checkpoint_file: audit-checkpoints.jsonl  # append-only copy outside the database
  syslog: null              # also to syslog: /dev/log or HOST:PORT
  http: null                # also POST each checkpoint to this URL
  every_seconds: 60         # provisor run makes one at least this often
"""

STARTER_POLICY = """\
# A first policy: one directory target and one manual application.
# Reference: docs/policy.md
targets:
  - name: directory
    class: ldap
    owner: identity-team@example.com
    leaver_action: disable
    correlation: [email]
    entitlements:
      - name: all-staff
      - name: engineering

  - name: payroll
    class: manual
    owner: finance-ops@example.com
    leaver_action: delete
    grace_days: 30
    sla_days: 2
    entitlements:
      - name: viewer

rules:
  - name: everyone-in-directory
    when: {attr: employment_type, in: [employee, contractor]}
    grant:
      - target: directory
        entitlements: [all-staff]

  - name: engineers
    when: {attr: department, equals: Engineering}
    grant:
      - target: directory
        entitlements: [engineering]
"""


def write_starter(workspace: Path) -> list[Path]:
    """Write the starter configuration and policy where they do not exist yet."""
    written: list[Path] = []
    config = workspace / CONFIG_FILE
    if not config.exists():
        config.write_text(STARTER_CONFIG, encoding="utf-8")
        written.append(config)
    policy_dir = workspace / "policy"
    if not policy_dir.exists():
        policy_dir.mkdir(parents=True)
        starter = policy_dir / "policy.yaml"
        starter.write_text(STARTER_POLICY, encoding="utf-8")
        written.append(starter)
    return written
