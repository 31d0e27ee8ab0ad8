"""Parsing of "[user@]host:path" operands, as scp reads them."""
from __future__ import annotations

import pytest

from bacpac.errors import UsageError
from bacpac.spec import Endpoint, parse_endpoint


@pytest.mark.parametrize("text", [
    "disk.img", "/dev/sdb", "/tmp/a:b", "./a:b", "dir/a:b", "../x:y", "~/disk.img", "a@b"])
def test_local_paths(text: str) -> None:
    endpoint = parse_endpoint(text)
    assert endpoint == Endpoint(path=text)
    assert endpoint.is_local
    assert str(endpoint) == text


@pytest.mark.parametrize("text,path,host,user", [
    ("standby:/dev/sdb", "/dev/sdb", "standby", None),
    ("standby:disk.img", "disk.img", "standby", None),
    ("standby:a:b", "a:b", "standby", None),
    ("root@standby:/dev/sdb", "/dev/sdb", "standby", "root"),
    ("backup.example.com:/srv/disk.img", "/srv/disk.img", "backup.example.com", None),
    ("me@10.0.0.2:/x", "/x", "10.0.0.2", "me"),
    ("a@b@host:/x", "/x", "host", "a@b"),
    ("[::1]:/dev/sdb", "/dev/sdb", "::1", None),
    ("[fe80::1%eth0]:disk.img", "disk.img", "fe80::1%eth0", None),
])
def test_remote_endpoints(text: str, path: str, host: str, user) -> None:
    endpoint = parse_endpoint(text)
    assert endpoint == Endpoint(path=path, host=host, user=user)
    assert not endpoint.is_local


def test_user_at_bracketed_v6_host() -> None:
    assert parse_endpoint("root@[::1]:/dev/sdb") == Endpoint("/dev/sdb", "::1", "root")


def test_str_brackets_v6_hosts_and_round_trips() -> None:
    assert str(parse_endpoint("[::1]:/dev/sdb")) == "[::1]:/dev/sdb"
    assert str(parse_endpoint("standby:/dev/sdb")) == "standby:/dev/sdb"
    assert parse_endpoint(str(parse_endpoint("[::1]:/x"))) == parse_endpoint("[::1]:/x")


@pytest.mark.parametrize("text", ["root@standby:/dev/sdb", "root@[::1]:/dev/sdb", "a@b@h:/x"])
def test_str_keeps_the_user_as_typed(text: str) -> None:
    assert str(parse_endpoint(text)) == text


@pytest.mark.parametrize("text,words", [
    ("", "empty"),
    (":/dev/sdb", "empty host"),
    (":path", "empty host"),
    ("host:", "no path"),
    ("@host:/x", "empty user"),
    ("user@:/x", "empty host"),
    ("[::1]/x", "[host]:path"),
    ("[::1]:", "no path"),
    ("[]:x", "empty host"),
])
def test_malformed_endpoints_are_usage_errors(text: str, words: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_endpoint(text)
    assert info.value.exit_code == 2
    assert words in str(info.value)
    assert "\n" not in str(info.value)
