"""Fix26c, the answer to review rev26c (tests/unit/test_hostile_rev26c.py): what a run's tag may hold
(``formats.text.tag_holds_credential``): a link's session id or OAuth code (``query_credential_name``), a chat
webhook's URL, plain notes under a weak name ("QA pass: 3/3", "sort key: created_at"), measure keys
(``token_budget``), a git remote naming its account as the URL's user; and a refusal that never quotes a tag key
holding a credential."""
from __future__ import annotations

import time

import pytest

from dagster_project.coordinator import REMOVED_TAG_TEXT, credential_refusal, scrubbed_tags
from formats.text import credential_name, query_credential_name, redact_credentials, tag_holds_credential

SECRET = "Fix26cSecret"


@pytest.mark.parametrize("name", [
    "session_id", "sessionId", "SESSIONID", "session", "user_session", "session_key", "code", "auth_code",
    "oauth_code", "authkey", "passcode", "sessionkey", "access_token",
])
def test_a_query_credential_name(name) -> None:
    assert query_credential_name(name)


@pytest.mark.parametrize("name", [
    "id", "assignee", "author", "target_session_attrs", "session_count", "country_code", "error_code", "zip_code",
    "codec", "state", "page", "versionId",
])
def test_not_a_query_credential_name(name) -> None:
    assert not query_credential_name(name)


@pytest.mark.parametrize("name", ["token_budget", "token_limit", "token_max", "secret_rotation", "password_limit",
                                  "session_id", "session", "code"])
def test_not_a_credential_name_outside_a_query(name) -> None:
    assert not credential_name(name)


@pytest.mark.parametrize("name", ["passcode", "authkey", "sessionkey", "qa_pass", "api_key", "db_pass"])
def test_still_a_credential_name(name) -> None:
    assert credential_name(name)


@pytest.mark.parametrize("value", [
    f"https://app.example/dashboard?session_id={SECRET}",
    f"https://app.example/dashboard?sessionId={SECRET}",
    f"https://app.example/dashboard?session={SECRET}",
    f"https://app.example/oauth/callback?code={SECRET}&state=xyz",
    f"https://app.example/oauth/callback?state=xyz&auth_code={SECRET}",
    f"https://wiki.example/export?authkey={SECRET}",
    f"https://meet.example/j/123456?passcode={SECRET}",
    f"https://hooks.slack.com/services/T0123ABCD/B0456EFGH/{SECRET}",
    f"alerts go to hooks.slack.com/services/T0123ABCD/B0456EFGH/{SECRET} now",
    f"https://hooks.slack.com/workflows/T0123ABCD/A0456/123/{SECRET}",
    f"https://discord.com/api/webhooks/1234567890/{SECRET}",
    f"https://discordapp.com/api/webhooks/1234567890/{SECRET}",
    f"https://canary.discord.com/api/v10/webhooks/1234567890/{SECRET}",
    f"https://contoso.webhook.office.com/webhookb2/a-b@c-d/IncomingWebhook/{SECRET}/e-f",
    f"pass: {SECRET}", "pass: hunter2", "QA pass: hunter2", "db pass: hunter2", "pass: 1234",
    "user=bob pass=hunter host=db", "pass: dedup", "key: created_at", "api_key: abc123", "second pass: d3dup only",
    f"secret key: {SECRET}", f"my password: {SECRET}", f"passcode: {SECRET}", f"authkey={SECRET}",
    "pass: " + "a" * 80 + " more words",
    # a token as a URL's user name: a known prefix, or random
    "https://ghp_0123456789abcdefghij0123456789abcdef@github.com/org/repo.git",
    "https://0123456789abcdef0123456789abcdef01234567@github.com/org/repo.git",      # 40 hex digits
    "https://abcdefabcdefabcdefabcdefabcdefab@github.com/org/repo.git",              # 32 letters
    "https://0123456789abcdefghij0123@github.com/org/repo.git",
    "https://" + "aB3-" * 10 + "xY9_@host.example/x",                                # base64url, 44 characters
])
def test_a_tag_value_holding_a_credential(value) -> None:
    assert tag_holds_credential(value)


@pytest.mark.parametrize("value", [
    "https://tracker.example/browse?id=42", "https://h/x?country_code=US&error_code=3",
    "postgresql://ro@db1,db2/pickapic?target_session_attrs=read-write", "https://h/x?session_count=3",
    "https://hooks.slack.com/services/", "https://slack.com/help/articles/123", "https://discord.com/channels/1/2",
    "QA pass: 3/3", "second pass: dedup only", "sort key: created_at", "primary key: id", "first pass: 0.95",
    "pass: true", "qa pass: ok", "key: 3", "final pass: tokens ok", "QA pass: 3/3, review pass: 2/2",
    "the key: it works", "pass: skipped for now", '{"qa_pass": "3/3", "note": "x"}', "session: 3",
    "code: refactor", "session_id: 42",
    # an account's or an organization's name as a URL's user (no password)
    "https://contoso-engineering@dev.azure.com/contoso-engineering/pickapic/_git/pickapic",
    "https://jonathan-williams@bitbucket.org/acme-research/pickapic.git",
    "https://myorganization-name@dev.azure.com/myorganization-name/p/_git/r",
    "https://longbitbucketuser@bitbucket.org/team/repo.git",
    "https://build-agent-2023-prod-eu@git.example/r.git", "ssh://git@git.example/pickapic.git",
])
def test_a_plain_tag_value(value) -> None:
    assert not tag_holds_credential(value)


@pytest.mark.parametrize(("key", "value"), [
    ("qa_pass", "3/3"), ("token_budget", "512"), ("token_limit", "77"), ("qa_pass", "approved by alice"),
    ("session_id", "abc"), ("sort_key", "created_at"),
])
def test_a_plain_tag_key(key, value) -> None:
    assert not tag_holds_credential(value, key=key)
    assert credential_refusal(None, {key: value}) is None


@pytest.mark.parametrize(("key", "value"), [
    ("qa_pass", "hunter2"), ("api_key", "abc123"), ("passcode", "1234"), ("db_pass", "x9"), ("qa_pass", "pass1 x"),
])
def test_a_tag_key_with_a_value_looking_like_a_secret(key, value) -> None:
    assert tag_holds_credential(value, key=key)


@pytest.mark.parametrize("key", [
    f"ghp_{SECRET}0123456789abcdefghij", f"AWS_SECRET_ACCESS_KEY={SECRET}", f"Authorization: Bearer {SECRET}0123",
    f"token={SECRET}", f"https://hooks.slack.com/services/T0/B0/{SECRET}", f"pass: {SECRET}",
])
def test_a_refusal_never_quotes_a_key_holding_a_credential(key) -> None:
    reason = credential_refusal(None, {key: "pasted into the wrong field"})
    assert reason is not None and reason.startswith("a tag whose key holds a credential") and SECRET not in reason


def test_a_refusal_for_a_value_still_names_its_key() -> None:
    reason = credential_refusal(None, {"PGPASSWORD": SECRET})
    assert reason is not None and reason.startswith("the tag 'PGPASSWORD' holds a credential")
    assert SECRET not in reason


def test_the_scrub_hides_a_session_link_and_a_webhook() -> None:
    tags = {"link": f"https://app.example/dashboard?session_id={SECRET}",
            "notify": f"https://hooks.slack.com/services/T0/B0/{SECRET}", "note": "QA pass: 3/3",
            "remote": "https://contoso-engineering@dev.azure.com/contoso-engineering/p/_git/p"}
    assert scrubbed_tags(tags) == {"link": "https://app.example/dashboard?***", "notify": REMOVED_TAG_TEXT,
                                   "note": tags["note"], "remote": tags["remote"]}


@pytest.mark.parametrize("value", [
    "a pass: 3/3 " * 40000, "x key: dedup more " * 25000, "pass:3/3," * 40000, "pass: " * 60000,
    "a " * 150000 + ":", " " * 300000 + "key: x", "sort key: ab " * 30000, "key: dedup " + "x " * 150000,
    "pass:" * 60000, "hooks.slack.com/services/" * 12000, "discord.com/api/webhooks/1" * 12000,
    "a-" * 150000 + ".webhook.office.com", "a" * 300000 + ".webhook.office.com/webhookb2/",
    "https://" + "a1" * 150000 + "@h", "a://" + "Ab1-" * 75000 + "@h", "a://" + "b1@" * 100000,
    "https://h/x?" + "session_code&" * 25000, "https://h/x?" + "a_" * 150000 + "code=1",
    "https://h/x?" + "session_id&" * 30000, "pass: 'a " * 50000,
])
def test_the_checks_are_linear(value) -> None:
    started = time.thread_time()   # CPU time: a loaded CI machine does not inflate it
    tag_holds_credential(value)
    tag_holds_credential(value, key=value)
    credential_refusal(None, {value: value})
    redact_credentials(value)
    assert time.thread_time() - started < 3.0     # quadratic: minutes for these 200-400 KB values
