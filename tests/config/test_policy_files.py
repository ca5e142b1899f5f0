from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from provisor.config.policy_files import LoadedPolicy, load_policy
from provisor.errors import PolicyError

TARGETS = """\
targets:
  - name: github
    class: scim
    owner: platform-team
    connection:
      url: https://scim.example.com
      token: {env: GITHUB_TOKEN}
    entitlements:
      - name: developers
      - name: admins
"""

RULES = """\
rules:
  - name: engineers
    when:
      all:
        - attr: department
          equals: Engineering
        - not: {attr: title, prefix: Intern}
    grant:
      - target: github
        entitlements: [developers]
  - name: everyone
    when: {attr: email, exists: true}
"""

ASSIGNMENTS = """\
assignments:
  - identity: alice@example.com
    role: github-admin
    approver: bob@example.com
    granted: 2024-03-01
roles:
  - name: github-admin
    grants:
      - target: github
        entitlements: [admins]
"""


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def problems_of(*paths: Path) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        load_policy(paths)
    assert str(caught.value).startswith(f"policy is invalid: {len(caught.value.problems)} problem")
    return caught.value.problems


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # problem lines then name files relative to tmp_path


def test_valid_policy_from_directory_and_file(tmp_path: Path) -> None:
    policy_dir = tmp_path / "policy"
    policy_dir.mkdir()
    write(policy_dir, "10-targets.yaml", TARGETS)
    write(policy_dir, "20-rules.yml", RULES)
    write(policy_dir, "notes.txt", "not: policy")
    write(policy_dir, "30-empty.yaml", "")
    extra = write(tmp_path, "assignments.yaml", ASSIGNMENTS)

    loaded = load_policy([policy_dir, extra])

    assert isinstance(loaded, LoadedPolicy)
    assert [p.name for p in loaded.files] == [
        "10-targets.yaml",
        "20-rules.yml",
        "30-empty.yaml",
        "assignments.yaml",
    ]
    policy = loaded.policy
    assert [r.name for r in policy.rules] == ["engineers", "everyone"]
    assert policy.targets[0].connection["token"].env == "GITHUB_TOKEN"
    assert policy.assignments[0].granted == date(2024, 3, 1)
    assert loaded.source_of(("rules", 1)) == f"policy/20-rules.yml:{line_of(RULES, 'everyone')}"
    assert loaded.source_of(("rules", 0, "when", "all", 1, "not", "prefix")) == (
        f"policy/20-rules.yml:{line_of(RULES, 'Intern')}"
    )
    assert loaded.source_of(("roles", 0, "grants", 0, "nowhere")) == (
        f"assignments.yaml:{line_of(ASSIGNMENTS, '- target: github')}"
    )


def test_sections_concatenate_in_file_order(tmp_path: Path) -> None:
    first = write(
        tmp_path, "b.yaml", TARGETS + "rules:\n  - {name: r1, when: {attr: a, exists: true}}\n"
    )
    second = write(tmp_path, "a.yaml", "rules:\n  - {name: r2, when: {attr: a, exists: true}}\n")

    loaded = load_policy([first, second])

    assert [r.name for r in loaded.policy.rules] == ["r1", "r2"]
    assert loaded.source_of(("rules", 1, "name")) == "a.yaml:2"


def test_unknown_target_in_grant_names_file_and_line(tmp_path: Path) -> None:
    rules = RULES.replace("- target: github", "- target: gitlab")
    targets = write(tmp_path, "targets.yaml", TARGETS)
    rules_file = write(tmp_path, "rules.yaml", rules)

    assert problems_of(targets, rules_file) == [
        f"rules.yaml:{line_of(rules, 'gitlab')} rules[0].grant[0].target: unknown target 'gitlab'"
    ]


def test_attribute_matcher_without_test(tmp_path: Path) -> None:
    rules = RULES.replace("        - not: {attr: title, prefix: Intern}", "        - attr: title")
    path = write(tmp_path, "rules.yaml", TARGETS + rules)

    [problem] = problems_of(path)

    assert problem.startswith(
        f"rules.yaml:{line_of(TARGETS + rules, 'attr: title')} rules[0].when.all[1]: "
        "an attribute matcher has 'attr' and exactly one of"
    )


def test_test_without_attr(tmp_path: Path) -> None:
    rules = RULES.replace("{attr: title, prefix: Intern}", "{equals: Intern}")
    path = write(tmp_path, "rules.yaml", TARGETS + rules)

    assert problems_of(path) == [
        f"rules.yaml:{line_of(TARGETS + rules, 'equals: Intern')} rules[0].when.all[1].not: "
        "'equals' needs 'attr' beside it"
    ]


def test_value_matching_no_union_member_is_one_problem(tmp_path: Path) -> None:
    text = "rules:\n  - name: r\n    when:\n      attr: a\n      in:\n        - {x: 1}\n"
    path = write(tmp_path, "rules.yaml", text)

    assert problems_of(path) == [
        "rules.yaml:6 rules[0].when.in[0]: expected one of: str, int, float, bool"
    ]


def test_missing_field_and_alias_names(tmp_path: Path) -> None:
    text = "targets:\n  - name: t\n    class: ftp\n"
    path = write(tmp_path, "targets.yaml", text)

    problems = problems_of(path)

    assert problems[0] == "targets.yaml:2 targets[0].owner: Field required"
    assert problems[1].startswith("targets.yaml:3 targets[0].class: Input should be 'scim'")


def test_unknown_top_level_section(tmp_path: Path) -> None:
    path = write(tmp_path, "policy.yaml", TARGETS + "groups:\n  - admins\n")

    [problem] = problems_of(path)

    assert problem.startswith(
        f"policy.yaml:{line_of(TARGETS, 'entitlements:') + 3} groups: unknown section"
    )


def test_section_must_be_a_list(tmp_path: Path) -> None:
    path = write(tmp_path, "policy.yaml", "rules:\nroles: {name: x}\n")

    assert problems_of(path) == ["policy.yaml:2 roles: must be a list"]


def test_duplicate_key(tmp_path: Path) -> None:
    text = TARGETS.replace("    owner: platform-team\n", "    owner: a\n    owner: b\n")
    path = write(tmp_path, "targets.yaml", text)

    assert problems_of(path) == [
        f"targets.yaml:{line_of(text, 'owner: b')} targets[0].owner: duplicate key (first at line "
        f"{line_of(text, 'owner: a')})"
    ]


def test_yaml_syntax_error(tmp_path: Path) -> None:
    good = write(tmp_path, "targets.yaml", TARGETS)
    bad = write(tmp_path, "rules.yaml", "rules:\n  - name: r\n    when: {attr: a\n  - name: s\n")

    [problem] = problems_of(good, bad)

    assert problem.startswith("rules.yaml:4: YAML error: ")


def test_missing_path(tmp_path: Path) -> None:
    assert problems_of(tmp_path / "nowhere.yaml") == ["nowhere.yaml: no such file or directory"]


def test_plaintext_password_in_connection(tmp_path: Path) -> None:
    text = TARGETS.replace("token: {env: GITHUB_TOKEN}", "password: hunter2")
    path = write(tmp_path, "targets.yaml", text)

    [problem] = problems_of(path)

    # the line of the setting itself, not of its connection
    line = line_of(text, "password:")
    assert problem.startswith(f"targets.yaml:{line} targets[0].connection.password:")
    assert "{env: VARIABLE}" in problem
    assert "hunter2" not in problem


def test_all_problems_in_all_files_in_one_error(tmp_path: Path) -> None:
    targets = TARGETS.replace("owner: platform-team", "owner: ''")
    rules = RULES.replace("exists: true", "exists: true, colour: red")
    write(tmp_path, "a-targets.yaml", targets)
    write(tmp_path, "b-rules.yaml", rules)
    write(tmp_path, "c-more.yaml", "sod:\n  - name: s\n    conflicts: [github:admins]\n")

    problems = problems_of(tmp_path)

    assert len(problems) == 3
    assert problems[0].startswith(f"a-targets.yaml:{line_of(targets, 'owner')} targets[0].owner:")
    assert (
        problems[1]
        == f"b-rules.yaml:{line_of(rules, 'colour')} rules[1].when.colour: unknown field"
    )
    assert problems[2].startswith("c-more.yaml:3 sod[0].conflicts: List should have at least 2")


def test_digest_ignores_key_order_and_follows_content(tmp_path: Path) -> None:
    reordered = TARGETS.replace(
        "    class: scim\n    owner: platform-team\n", "    owner: platform-team\n    class: scim\n"
    )
    assert reordered != TARGETS
    original = load_policy([write(tmp_path, "a.yaml", TARGETS)]).digest
    same = load_policy([write(tmp_path, "b.yaml", reordered)]).digest
    changed = load_policy([write(tmp_path, "c.yaml", TARGETS.replace("admins", "owners"))]).digest

    assert original == same
    assert len(original) == 64
    assert changed != original


def test_nested_credentials_refused_but_placeholders_and_entitlement_names_pass(
    tmp_path: Path,
) -> None:
    nested = TARGETS.replace(
        "token: {env: GITHUB_TOKEN}", "token: {env: GITHUB_TOKEN}\n      auth: {client_secret: s3}"
    )
    [problem] = problems_of(write(tmp_path, "nested.yaml", nested))
    assert "'auth.client_secret' is a credential written in plain text" in problem
    allowed = TARGETS.replace(
        "token: {env: GITHUB_TOKEN}",
        "token: {env: GITHUB_TOKEN}\n"
        "      api: {endpoints: {create: {body: {password: '{password}'}}}}\n"
        "      entitlements: {token-admins: 'tag:administrator'}\n"
        "      verify_token: true",
    )
    loaded = load_policy([write(tmp_path, "allowed.yaml", allowed)])
    assert loaded.policy.targets[0].connection["verify_token"] is True


@pytest.mark.parametrize(
    ("connection", "field", "reason"),
    [
        ("url: 'https://h/scim?password=hunter2'", "url", "credential in the URL's query"),
        ("url: 'https://h/v2?x=1&api_key=zz9'", "url", "credential in the URL's query"),
        ("url: 'https://:hunter2@h/scim'", "url", "password in the URL"),
        ("url: 'https://u:hunter2@h/scim'", "url", "password in the URL"),
        ("pwd: hunter2", "pwd", "credential written in plain text"),
        ("pass: hunter2", "pass", "credential written in plain text"),
        (
            "api:\n        headers:\n          Authorization: Bearer abc",
            "api.headers.Authorization",
            "credential written in plain text",
        ),
        (
            "api:\n        headers:\n          X-Api-Key: k123",
            "api.headers.X-Api-Key",
            "credential written in plain text",
        ),
    ],
)
def test_inline_credentials_in_every_shape_are_refused_with_file_and_line(
    tmp_path: Path, connection: str, field: str, reason: str
) -> None:
    text = (
        "targets:\n  - name: app\n    class: scim\n    owner: team\n    connection:\n"
        f"      {connection}\n"
    )
    key = field.rsplit(".", 1)[-1]
    line = next(i for i, row in enumerate(text.splitlines(), 1) if row.strip().startswith(key))
    [problem] = problems_of(write(tmp_path, "p.yaml", text))
    assert problem.startswith(f"p.yaml:{line} targets[0].connection.{field}:"), problem
    assert reason in problem
    assert "hunter2" not in problem  # the message names the place, never the value


def test_query_placeholders_and_references_pass(tmp_path: Path) -> None:
    text = (
        "targets:\n  - name: app\n    class: scim\n    owner: team\n    connection:\n"
        "      url: 'https://h/scim?token={token}'\n"
        "      api:\n        headers:\n          Authorization: {env: APP_AUTH}\n"
    )
    assert load_policy([write(tmp_path, "p.yaml", text)]).policy.targets[0].name == "app"


def test_an_alias_bomb_is_refused_with_its_line(tmp_path: Path) -> None:
    rows = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    rows += [
        f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]"
        for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    ]
    text = "\n".join(rows) + "\ntargets: *i\n"
    [problem] = problems_of(write(tmp_path, "bomb.yaml", text))
    assert "alias bomb" in problem and problem.startswith("bomb.yaml:")
