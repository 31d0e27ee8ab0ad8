"""The inventory of `bacpac run`: what loads, and every error naming its file, line and key."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from bacpac.inventory.load import InventoryError, load
from bacpac.inventory.model import Stamp
from clirun import bacpac

GOOD = """\
defaults:
  sudo: false
hosts:
  standby1:
    hostname: 10.0.0.7
    port: 2222
    user: backup
  offsite: {}
jobs:
  - name: disk
    source: /dev/sda
    target: standby1:/dev/sdb
    force: true
    saveset: offsite:/backup/{job}-{date}.bps
    keep: 3
  - name: home
    type: copy
    source: [/home, /etc]
    target: standby1:/srv/mirror
"""


def write(tmp_path: Path, text: str, name: str = "inventory.yml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def refused(tmp_path: Path, text: str, env: dict | None = None) -> str:
    path = write(tmp_path, text)
    with pytest.raises(InventoryError) as caught:
        load(path, env or {})
    message = str(caught.value)
    assert message.startswith(path + ":"), message
    return message


def test_a_good_inventory_loads_hosts_jobs_and_defaults(tmp_path):
    inventory = load(write(tmp_path, GOOD), {})
    assert inventory.hosts["standby1"].port == 2222
    assert inventory.hosts["standby1"].user == "backup"
    assert inventory.hosts["offsite"].hostname is None
    disk, home = inventory.jobs
    assert (disk.type, disk.force, disk.keep, disk.line) == ("dup", True, 3, 10)
    assert disk.hosts() == ("standby1", "offsite")
    assert home.sources == ("/home", "/etc") and home.type == "copy"


def test_the_example_in_configs_loads():
    inventory = load(str(Path(__file__).parents[1] / "configs" / "inventory.yml"),
                     {"STANDBY1_PASSWORD": "x"})
    assert [job.name for job in inventory.jobs] == ["system-disk", "home"]


def test_a_misspelt_key_names_it_and_its_line(tmp_path):
    text = GOOD.replace("    target: standby1:/srv/mirror", "    targte: standby1:/srv/mirror")
    message = refused(tmp_path, text)
    assert ":19: targte: unknown key" in message


def test_run_refuses_a_misspelt_key_with_exit_2_and_runs_nothing(tmp_path):
    target = tmp_path / "t.img"
    source = tmp_path / "s.img"
    source.write_bytes(b"x" * 4096)
    path = write(tmp_path, f"""\
        hosts: {{}}
        jobs:
          - name: one
            source: {source}
            target: {target}
          - name: two
            source: {source}
            targte: {tmp_path}/u.img
        """)
    run = bacpac("run", "--no-progress", path)
    line = run.one_error_line(2, "targte", path)
    assert ":8:" in line
    assert not target.exists()


@pytest.mark.parametrize("change, words", [
    (("    port: 2222", "    port: many"), (":6: port:", "whole number")),
    (("    port: 2222", "    port: 70000"), (":6: port:", "1 to 65535")),
    (("    force: true", "    force: yes please"), (":13: force:", "true or false")),
    (("  - name: home", "  - name: disk"), (":16: name:", "line 10")),
    (("standby1:/srv/mirror", "nowhere:/srv/mirror"), (":19: target:", "unknown host 'nowhere'")),
    (("{job}-{date}", "{job}-{day}"), (":14: saveset:", "unknown placeholder {day}")),
    (("{job}-{date}", "{job}-{date"), (":14: saveset:", "placeholder")),
    (("standby1:/srv/mirror", "standby1:/dev/sdb"), (":19: target:", "job 'disk'")),
    (("    type: copy", "    type: mirror"), (":17: type:", "'mirror'")),
    (("    source: [/home, /etc]", "    source: {a: 1}"), (":18: source:", "list of strings")),
    (("[/home, /etc]", "[/home, 'elsewhere:/etc']"), (":18: source:", "unknown host 'elsewhere'")),
    (("    source: /dev/sda", "    source: standby1:/dev/sda"), (":11: source:", "local disk")),
    (("    keep: 3", "    keep: 0"), (":15: keep:", "from 1")),
    (("{job}-{date}.bps", "{job}.bps"), (":15: keep:", "{date}")),
    (("  sudo: false", "  sudoo: false"), (":2: sudoo:", "unknown key")),
    (("    type: copy", "    type: copy\n    delta: true"), (":18: delta:", "unknown key")),
    (("  - name: home\n    type: copy\n", "  - type: copy\n"), (":16: name: missing",)),
])
def test_each_error_names_its_line_and_key(tmp_path, change, words):
    old, new = change
    assert old in GOOD
    message = refused(tmp_path, GOOD.replace(old, new, 1))
    for word in words:
        assert word in message, (word, message)


def test_a_password_comes_only_from_the_environment(tmp_path):
    text = GOOD.replace("    user: backup", "    user: backup\n    password_env: SB_PASS")
    assert "$SB_PASS is not set" in refused(tmp_path, text)
    assert load(write(tmp_path, text), {"SB_PASS": "s"}).hosts["standby1"].password_env == "SB_PASS"
    assert "password:" in refused(tmp_path, GOOD.replace("    user: backup",
                                                          "    password: hunter2"))


def test_bad_yaml_names_its_line(tmp_path):
    assert ":3:" in refused(tmp_path, "jobs:\n  - name: a\n   source: [\n")


def test_hosts_from_an_ansible_inventory(tmp_path):
    write(tmp_path, """\
        all:
          vars:
            ansible_user: backup
          children:
            standbys:
              hosts:
                sb1:
                  ansible_host: 10.0.0.7
                  ansible_port: 2222
                  ansible_ssh_private_key_file: ~/.ssh/sb1
                sb2:
                  ansible_user: root
        """, "hosts.yml")
    inventory = load(write(tmp_path, f"""\
        hosts_from: hosts.yml
        hosts:
          sb2:
            port: 2200
        jobs:
          - name: a
            source: /dev/sda
            target: sb1:/dev/sdb
        """), {})
    sb1, sb2 = inventory.hosts["sb1"], inventory.hosts["sb2"]
    assert (sb1.hostname, sb1.port, sb1.user) == ("10.0.0.7", 2222, "backup")
    assert sb1.identity_file and sb1.identity_file.endswith("/.ssh/sb1")
    assert (sb2.user, sb2.port) == (None, 2200)  # the inventory's own entry wins whole


def test_placeholders_are_filled_once_per_run():
    stamp = Stamp("2026-12-05", "052300", "ctl")
    assert stamp.fill("/b/{job}-{date}-{time}-{host}.bps", "disk") == \
        "/b/disk-2026-12-05-052300-ctl.bps"
    assert stamp.pattern("/b/{job}-{date}.bps", "disk") == "/b/disk-*.bps"
