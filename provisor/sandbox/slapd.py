"""A throwaway OpenLDAP server, for tests, benchmarks and the demo of the LDAP connector.

Does: write a minimal ``slapd.conf`` in a temporary directory (the ``core``, ``cosine``,
``inetorgperson`` and ``nis`` schemas, an ``mdb`` database for ``dc=example,dc=org``, the
``memberof``, ``refint`` and ``ppolicy`` overlays when the installed OpenLDAP has them, equality
indexes for the attributes the connector searches by), load the suffix entry and the
``ou=people``, ``ou=groups`` and ``ou=disabled`` containers offline with ``slapadd``, start
``slapd`` on a free loopback port, wait until the port accepts connections, create groups on
request, and stop it with SIGTERM and remove the directory.
Does not: touch the machine's own ``slapd`` service or ``/etc/ldap/slapd.d``, or install
anything: when ``slapd`` is missing it says how to install it.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType

from provisor.errors import ProvisorError
from provisor.sandbox import free_port

SLAPD = Path("/usr/sbin/slapd")
SLAPADD = Path("/usr/sbin/slapadd")
SCHEMA_DIR = Path("/etc/ldap/schema")
MODULE_DIR = Path("/usr/lib/ldap")
INSTALL_HINT = "apt-get install -y slapd ldap-utils"
BASE_SCHEMAS = ("core", "cosine", "inetorgperson", "nis")
OVERLAYS = ("memberof", "refint", "ppolicy")  # in stacking order; each only when installed
GROUP_STYLES = {
    # group_style -> (object class, member attribute, whether the attribute holds DNs)
    "groupOfNames": ("groupOfNames", "member", True),
    "groupOfUniqueNames": ("groupOfUniqueNames", "uniqueMember", True),
    "posixGroup": ("posixGroup", "memberUid", False),
}


def _module(name: str) -> bool:
    return (MODULE_DIR / f"{name}.la").exists() or (MODULE_DIR / f"{name}.so").exists()


class Slapd:
    """One ``slapd`` of its own. ``url``, ``bind_dn`` (the root DN), ``password`` and
    ``base_dn`` say how to reach it; ``people_dn``, ``groups_dn`` and ``disabled_dn`` are the
    containers loaded at start. Use as a context manager, or call ``start`` and ``stop``.

    ``schemas`` adds schema files from ``/etc/ldap/schema`` by name (e.g. ``misc``; not
    ``msuser``, whose ``memberOf`` clashes with the ``memberof`` overlay's); ``extra_schema`` is
    schema text of one's own (``attributetype``/``objectclass`` lines), written to a file and
    included after them.
    ``overlays`` picks among ``memberof``, ``refint`` and ``ppolicy`` (default: all three, each
    when installed); ``overlays`` after ``start`` says which run.
    """

    def __init__(
        self,
        *,
        base_dn: str = "dc=example,dc=org",
        password: str | None = None,
        port: int | None = None,
        schemas: Sequence[str] = (),
        extra_schema: str = "",
        overlays: Sequence[str] | None = None,
        startup_timeout: float = 20.0,
    ) -> None:
        self.base_dn = base_dn
        self.bind_dn = f"cn=admin,{base_dn}"
        self.password = password or secrets.token_urlsafe(16)
        self.port = port or free_port()
        self.url = f"ldap://127.0.0.1:{self.port}"
        self.people_dn = f"ou=people,{base_dn}"
        self.groups_dn = f"ou=groups,{base_dn}"
        self.disabled_dn = f"ou=disabled,{base_dn}"
        self.schemas = tuple(schemas)
        self.extra_schema = extra_schema
        self.wanted_overlays = OVERLAYS if overlays is None else tuple(overlays)
        self.startup_timeout = startup_timeout
        self.root: Path | None = None
        self.overlays: tuple[str, ...] = ()  # the overlays running, once started
        self._process: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"Slapd(url={self.url!r}, base_dn={self.base_dn!r})"

    # --- configuration ----------------------------------------------------------------------

    def _config(self, root: Path) -> str:
        includes = [SCHEMA_DIR / f"{name}.schema" for name in (*BASE_SCHEMAS, *self.schemas)]
        missing = [str(path) for path in includes if not path.exists()]
        if missing:
            raise ProvisorError(f"slapd: schema file(s) not found: {', '.join(missing)}")
        unknown = set(self.wanted_overlays) - set(OVERLAYS)
        if unknown:
            raise ProvisorError(f"slapd: unknown overlay(s) {sorted(unknown)}: use {OVERLAYS}")
        overlays = [name for name in OVERLAYS if name in self.wanted_overlays and _module(name)]
        # OpenLDAP 2.4 ships the password policy schema as a file; 2.5 builds it into the module.
        if "ppolicy" in overlays and (SCHEMA_DIR / "ppolicy.schema").exists():
            includes.append(SCHEMA_DIR / "ppolicy.schema")
        if self.extra_schema.strip():
            extra = root / "extra.schema"
            extra.write_text(self.extra_schema.strip() + "\n", encoding="utf-8")
            includes.append(extra)
        self.overlays = tuple(overlays)
        lines = [f"include {path}" for path in includes]
        lines += [
            f"pidfile {root / 'slapd.pid'}",
            f"argsfile {root / 'slapd.args'}",
            f"modulepath {MODULE_DIR}",
            "moduleload back_mdb",
            *(f"moduleload {name}" for name in overlays),
            "sizelimit unlimited",
            "database mdb",
            f'suffix "{self.base_dn}"',
            f'rootdn "{self.bind_dn}"',
            f"rootpw {self.password}",
            f"directory {root / 'data'}",
            "maxsize 4294967296",
            "dbnosync",  # a throwaway database: durability is not worth the writes' fsyncs
            "index objectClass eq",
            "index entryUUID eq",
            "index uid,cn,mail,employeeNumber eq",
            "index member,uniqueMember,memberUid eq",
        ]
        if "memberof" in overlays:
            lines += ["overlay memberof", "memberof-refint TRUE"]
        if "refint" in overlays:
            lines += ["overlay refint", "refint_attributes member uniqueMember"]
        if "ppolicy" in overlays:
            lines += ["overlay ppolicy"]
        return "\n".join(lines) + "\n"

    def _seed(self) -> str:
        kind, _, top = self.base_dn.split(",")[0].partition("=")
        if kind.strip().lower() == "dc":
            suffix = f"objectClass: dcObject\nobjectClass: organization\no: {top}\ndc: {top}\n"
        elif kind.strip().lower() == "o":
            suffix = f"objectClass: organization\no: {top}\n"
        else:
            raise ProvisorError(f"slapd: base_dn {self.base_dn!r} must start with dc= or o=")
        entries = [f"dn: {self.base_dn}\n{suffix}"]
        for dn in (self.people_dn, self.groups_dn, self.disabled_dn):
            ou = dn.split(",")[0].split("=", 1)[1]
            entries.append(f"dn: {dn}\nobjectClass: organizationalUnit\nou: {ou}\n")
        return "\n".join(entries)

    # --- running ------------------------------------------------------------------------------

    def start(self) -> Slapd:
        if self._process is not None:
            return self
        for binary in (SLAPD, SLAPADD):
            if not binary.exists():
                raise ProvisorError(
                    f"OpenLDAP's {binary} is not installed; install it with: {INSTALL_HINT}"
                )
        root = Path(tempfile.mkdtemp(prefix="provisor-slapd-"))
        self.root = root
        try:
            (root / "data").mkdir()
            conf = root / "slapd.conf"
            conf.write_text(self._config(root), encoding="utf-8")
            (root / "seed.ldif").write_text(self._seed(), encoding="utf-8")
            loaded = subprocess.run(
                [str(SLAPADD), "-f", str(conf), "-l", str(root / "seed.ldif")],
                capture_output=True,
                timeout=60,
            )
            if loaded.returncode != 0:
                detail = loaded.stderr.decode(errors="replace")
                raise ProvisorError(f"slapadd failed ({loaded.returncode}): {detail}")
            log = (root / "slapd.log").open("wb")
            with log:
                self._process = subprocess.Popen(
                    [str(SLAPD), "-f", str(conf), "-h", f"{self.url}/", "-d", "0"],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self._wait()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait(self) -> None:
        """Until the port accepts a TCP connection (a raw socket: an ldap3 ``Server`` that saw
        a refused connection can stall for seconds before it tries again)."""
        assert self._process is not None
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self._process.poll() is not None:
                raise ProvisorError(
                    f"slapd exited with {self._process.returncode} before listening: "
                    f"{self.log_tail()}"
                )
            with socket.socket() as sock:
                sock.settimeout(1.0)
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if time.monotonic() > deadline:
                raise ProvisorError(
                    f"slapd did not listen on port {self.port} within {self.startup_timeout:g} s: "
                    f"{self.log_tail()}"
                )
            time.sleep(0.02)

    def log_tail(self, lines: int = 20) -> str:
        if self.root is None or not (self.root / "slapd.log").exists():
            return "(no log)"
        text = (self.root / "slapd.log").read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self) -> None:
        """SIGTERM, wait (SIGKILL after 10 s), then remove the temporary directory."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def __enter__(self) -> Slapd:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # --- content --------------------------------------------------------------------------------

    def add_ou(self, dn: str) -> str:
        """Create the organizational unit ``dn`` (its parent must exist); returns ``dn``."""
        ou = dn.split(",")[0].split("=", 1)[1]
        self._add([(dn, {"objectClass": ["organizationalUnit"], "ou": [ou]})])
        return dn

    def create_groups(
        self,
        names: Iterable[str],
        *,
        style: str = "groupOfNames",
        parent: str | None = None,
        first_gid: int = 10000,
    ) -> dict[str, str]:
        """Create empty groups under ``parent`` (default ``groups_dn``); returns name -> DN.

        ``style`` is ``groupOfNames``, ``groupOfUniqueNames`` (both must hold a member: an
        empty DN stands in for none) or ``posixGroup`` (numbered from ``first_gid``)."""
        if style not in GROUP_STYLES:
            raise ProvisorError(f"unknown group style {style!r}: use one of {sorted(GROUP_STYLES)}")
        object_class, member, _ = GROUP_STYLES[style]
        parent = parent or self.groups_dn
        made: dict[str, str] = {}
        entries = []
        for offset, name in enumerate(names):
            attributes: dict[str, list[str]] = {"objectClass": [object_class], "cn": [name]}
            if style == "posixGroup":
                attributes["gidNumber"] = [str(first_gid + offset)]
            else:
                attributes[member] = [""]
            made[name] = f"cn={name},{parent}"
            entries.append((made[name], attributes))
        self._add(entries)
        return made

    def _add(self, entries: list[tuple[str, dict[str, list[str]]]]) -> None:
        import ldap3  # type: ignore[import-untyped]  # only needed once the server runs

        if not self.running:
            raise ProvisorError("slapd is not running: start() it first")
        server = ldap3.Server(self.url, get_info=ldap3.NONE, connect_timeout=5)
        connection = ldap3.Connection(
            server, self.bind_dn, self.password, auto_bind=True, receive_timeout=30
        )
        try:
            for dn, attributes in entries:
                if not connection.add(dn, attributes=attributes):
                    raise ProvisorError(f"slapd: cannot add {dn}: {connection.result}")
        finally:
            with contextlib.suppress(Exception):
                connection.unbind()
