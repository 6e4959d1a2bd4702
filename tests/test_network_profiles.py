"""bench.network.profiles: the built-in profiles, user profiles from pyproject.toml and files,
and the errors a bad one gets (plain calls, no namespaces); the netem and delayd arguments
a profile turns into."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.network import BUILTIN, Profile, ProfileError, get_profile, get_profiles
from bench.network.netem import netem_args, setup_commands
from bench.network.network import delayd_args
from bench.network.profiles import load_profiles, parse_profile


def write(tmp_path: Path, text: str, name: str = "pyproject.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_builtin_profiles_are_the_issues() -> None:
    assert BUILTIN["loopback"].loopback
    assert BUILTIN["lan"].rtt_ms == 1.0
    assert (BUILTIN["wan"].rtt_ms, BUILTIN["wan"].bandwidth_mbit) == (100.0, 50.0)
    lossy = BUILTIN["lossy"]
    assert (lossy.rtt_ms, lossy.loss_pct, lossy.bandwidth_mbit) == (100.0, 1.0, 10.0)
    assert not any(p.loopback for name, p in BUILTIN.items() if name != "loopback")
    assert get_profile("wan") is BUILTIN["wan"]


def test_a_user_profile_from_pyproject(tmp_path: Path) -> None:
    path = write(tmp_path, """
[tool.rtbench.net.mobile]
rtt_ms = 150
jitter_ms = 10
loss_pct = 0.5
bandwidth_mbit = 5
description = "3G"

[tool.rtbench.net.far]
delay_ms = 120
""")
    profiles = load_profiles(path)
    assert set(BUILTIN) < set(profiles)
    mobile = profiles["mobile"]
    assert (mobile.delay_ms, mobile.jitter_ms, mobile.loss_pct, mobile.bandwidth_mbit) == (
        75.0, 10.0, 0.5, 5.0)
    assert mobile.effective_queue_ms == 150.0  # one RTT by default
    assert profiles["far"].rtt_ms == 240.0 and profiles["far"].effective_queue_ms is None
    assert [p.name for p in get_profiles("loopback, mobile", path)] == ["loopback", "mobile"]


def test_a_profile_file_by_path(tmp_path: Path) -> None:
    path = write(tmp_path, "rtt_ms = 20\nbandwidth_mbit = 100\nqueue_ms = 5\n", "metro.toml")
    p = get_profile(str(path))
    assert (p.name, p.rtt_ms, p.effective_queue_ms) == ("metro", 20.0, 5.0)
    named = write(tmp_path, 'name = "dc"\nrtt_ms = 0.2\n', "x.toml")
    assert get_profile(str(named)).name == "dc"


@pytest.mark.parametrize(("table", "message"), [
    ({"rtt": 100}, "unknown key(s) rtt"),
    ({"loss": 1}, "loss is loss_pct"),
    ({"rtt_ms": "100"}, "rtt_ms must be a number, got '100'"),
    ({"rtt_ms": True}, "rtt_ms must be a number"),
    ({"rtt_ms": -1}, "rtt_ms must be between 0 and 60000"),
    ({"rtt_ms": 10, "delay_ms": 5}, "not both"),
    ({"rtt_ms": 10, "jitter_ms": 6}, "must not exceed the one-way delay"),
    ({"loss_pct": 100}, "below 100"),
    ({"loss_pct": 150}, "loss_pct must be between 0 and 100"),
    ({"bandwidth_mbit": 0}, "at least 0.01"),
    ({"queue_ms": 10}, "queue_ms needs bandwidth_mbit"),
    ({"rtt_ms": float("nan")}, "rtt_ms must be between"),
    ({"description": 3}, "description must be a string"),
])
def test_bad_values_are_refused_with_the_key_and_place(table: dict[str, object],
                                                       message: str) -> None:
    with pytest.raises(ProfileError, match=r"^here: ") as info:
        parse_profile("x", table, "here")
    assert message in str(info.value)


def test_bad_files_and_names(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="unknown network profile 'nope'; known: loopback"):
        get_profile("nope", tmp_path / "absent.toml")
    clash = write(tmp_path, "[tool.rtbench.net.wan]\nrtt_ms = 150\n")
    with pytest.raises(ProfileError, match="'wan' is a built-in profile"):
        load_profiles(clash)
    broken = write(tmp_path, "[tool.rtbench.net.x\n", "broken.toml")
    with pytest.raises(ProfileError, match="not valid TOML"):
        load_profiles(broken)
    with pytest.raises(ProfileError, match="cannot read network profiles"):
        get_profile(str(tmp_path / "missing.toml"))
    with pytest.raises(ProfileError, match="named twice"):
        get_profiles("wan,wan")
    with pytest.raises(ProfileError, match="letters, digits"):
        get_profile(str(write(tmp_path, 'name = "a b"\n', "y.toml")))


def test_the_elements_arguments() -> None:
    wan = BUILTIN["wan"]
    args = delayd_args(wan, seed=7)
    assert args[args.index("--delay-us") + 1] == "50000"
    assert args[args.index("--rate-bps") + 1] == "50000000"
    assert args[args.index("--queue-us") + 1] == "100000"
    assert args[args.index("--loss-ppm") + 1] == "0"
    lossy = delayd_args(BUILTIN["lossy"])
    assert lossy[lossy.index("--loss-ppm") + 1] == "10000"  # 1 % = 10,000 ppm
    assert args[args.index("--early-us") + 1] == "30"
    assert "--rate-bps" not in delayd_args(BUILTIN["lan"])


def test_the_netem_arguments() -> None:
    assert netem_args(BUILTIN["lossy"]) == [
        "netem", "delay", "50000us", "loss", "random", "1%", "rate", "10000000bit",
        "limit", "1000"]
    jittered = Profile("j", delay_ms=10, jitter_ms=2)
    # netem reorders jittered packets unless it also paces them
    assert netem_args(jittered)[:6] == ["netem", "delay", "10000us", "2000us", "distribution",
                                        "uniform"]
    assert "rate" in netem_args(jittered)
    cmds = setup_commands(BUILTIN["wan"], 4242, ("127.18.0.1", "127.18.0.2"))
    assert cmds[0] == (0, ["ip", "link", "add", "name", "rtb0", "type", "veth", "peer", "name",
                           "rtb1", "netns", "4242"])
    assert [side for side, argv in cmds if argv[0] == "tc"] == [0, 1]
