"""Start-up: invoke, which Paramiko imports for its own ssh_config reader, is deferred where
bacpac first imports Paramiko, importing bacpac itself changes nothing in sys.modules, and the
helper loads a job's module only when it runs that job."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Optional

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _python(code: str, env: Optional[dict] = None) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_importing_bacpac_puts_no_stand_in_into_sys_modules() -> None:
    out = _python("""
        import sys
        import bacpac, bacpac.spec
        print("invoke" in sys.modules, "paramiko" in sys.modules,
              [n for n, m in sys.modules.items() if type(m).__name__ == "_Deferred"])
    """)
    assert out == "False False []"


def test_client_start_does_not_load_invoke() -> None:
    out = _python("""
        import sys
        import bacpac.cli
        import bacpac.transport.ssh.connection  # Paramiko: imported where a session connects
        print(type(sys.modules["invoke"]).__name__, "invoke.tasks" in sys.modules)
    """)
    assert out == "_Deferred False"


def test_client_start_loads_no_display_and_no_yaml_parser() -> None:
    """What a run without a terminal never uses stays out of its start: the rich live view
    (ui/live.py, loaded only on a terminal) and any YAML parser (invoke's vendored one)."""
    out = _python("""
        import sys
        import bacpac.cli
        print(sorted(name for name in sys.modules if name.split(".")[0] in ("rich", "yaml")
                     or name in ("bacpac.ui.live", "invoke.vendor.yaml")))
    """)
    assert out == "[]"


def test_match_exec_in_bacpacs_own_reader_needs_no_invoke(tmp_path) -> None:
    """Where the OpenSSH client is missing (a PATH without ssh), bacpac's own reader runs."""
    config = tmp_path / "ssh_config"
    config.write_text("Match exec \"/bin/true\"\n    Port 2201\n"
                      "Match exec \"/bin/false\"\n    User nobody\n")
    out = _python(f"""
        import sys
        import bacpac.transport.ssh.connection
        from bacpac.transport.ssh.config import SshOptions, resolve_host
        cfg = resolve_host("somehost", None, SshOptions(config_file={str(config)!r}))
        print(cfg.port, cfg.user != "nobody", type(sys.modules["invoke"]).__name__)
    """, env={**os.environ, "PATH": str(tmp_path / "no-ssh-here")})
    assert out == "2201 True _Deferred"


def test_a_program_that_uses_invoke_after_bacpac_gets_the_real_one() -> None:
    out = _python("""
        import sys
        import bacpac.transport.ssh.connection
        import invoke
        print(invoke.run.__module__, type(sys.modules["invoke"]).__name__)
    """)
    assert out == "invoke module"


def test_defer_leaves_a_missing_module_missing() -> None:
    out = _python("""
        from bacpac import lazy
        lazy.defer("no_such_module_here")
        try:
            import no_such_module_here
        except ImportError:
            print("ImportError")
    """)
    assert out == "ImportError"


def test_helper_start_loads_no_job_module_until_an_open_names_it() -> None:
    """The helper's start is on a small dup's critical path: its server loads the dup job's
    module when the OPEN names it, and never the tree writer or the tar codec; nor socket (for
    the host name alone) or subprocess (for the zstd tool, where zstandard is missing)."""
    out = _python("""
        import sys
        from remote_helper.jobs import server
        jobs = lambda: sorted(n for n in sys.modules if n.startswith(("remote_helper.jobs.",
                                                                      "remote_helper.tree")))
        before = jobs()
        server.job_handler("dup")
        print(before, jobs(), [m for m in ("socket", "subprocess") if m in sys.modules])
    """)
    assert out == ("['remote_helper.jobs.server'] "
                   "['remote_helper.jobs.dup', 'remote_helper.jobs.server'] []")


def test_every_helper_job_resolves_to_a_function() -> None:
    out = _python("""
        from remote_helper.jobs import server
        print(all(callable(server.job_handler(name)) for name in server.JOBS))
        try:
            server.job_handler("no_such_job")
        except Exception as e:
            print(type(e).__name__, e)
    """)
    assert out == "True\nProtocolError unknown job 'no_such_job'"


def test_paramiko_knows_its_version_without_importlib_metadata() -> None:
    """Paramiko reads its version at import; lazy.quick_version answers it from METADATA, the
    same answer as importlib.metadata's, which is left unloaded and then loads for real."""
    out = _python("""
        import sys
        import bacpac.transport.ssh.connection, paramiko
        unloaded = "importlib.metadata" not in sys.modules
        from importlib import metadata
        print(unloaded, type(metadata).__name__, paramiko.__version__ == metadata.version("paramiko"))
    """)
    assert out == "True module True"


def test_quick_version_leaves_what_it_is_unsure_of_to_importlib_metadata(tmp_path) -> None:
    egg = tmp_path / "eggs"
    (egg / "some_pkg-1.0.egg-info").mkdir(parents=True)
    dist = tmp_path / "dists"
    (dist / "Some.Pkg-2.0.dist-info").mkdir(parents=True)
    (dist / "Some.Pkg-2.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: Some.Pkg\nVersion: 2.0\n\nVersion: 9\n")
    out = _python(f"""
        import sys
        from bacpac import lazy
        sys.path[:0] = [{str(dist)!r}]
        print(lazy._dist_version("some-pkg"))
        sys.path[:0] = [{str(egg)!r}]
        print(lazy._dist_version("some_pkg"), lazy._dist_version("no-such-dist"))
    """)
    assert out == "2.0\nNone None"


def test_a_dup_helper_is_shipped_the_modules_its_job_loads_and_no_tree_writer() -> None:
    out = _python("""
        import marshal, sys, zlib
        from bacpac.transport.helper import helper_payload
        from remote_helper.jobs import server
        server.job_handler("dup")
        loaded = {n for n in sys.modules if n.split(".")[0] == "remote_helper"}
        stage2 = marshal.loads(zlib.decompress(helper_payload("dup")[4:]))[1]
        shipped = set(stage2["modules"])
        print(sorted(loaded - shipped), sorted(n for n in shipped if ".tree" in n),
              set(stage2["packages"]) <= shipped, len(helper_payload("dup")) < len(helper_payload()))
    """)
    assert out == "[] [] True True"


def test_a_helper_refuses_a_job_whose_modules_were_not_shipped(tmp_path) -> None:
    """The loader claims every remote_helper module: one not shipped is an error, never a copy
    that an installed bacpac left on the target's path."""
    out = _python(f"""
        import subprocess, sys
        from bacpac.transport.helper import helper_argv, helper_payload
        from remote_helper.wire import protocol
        job = {{"protocol": protocol.PROTOCOL_VERSION, "job": "write_tree", "dest": {str(tmp_path)!r}}}
        done = subprocess.run(helper_argv(sys.executable, False), capture_output=True, timeout=60,
                              input=helper_payload("dup") + protocol.encode_json(protocol.OPEN, job))
        decoder = protocol.Decoder()
        decoder.feed(done.stdout)
        decoder.feed(b"")
        frames = []
        while True:
            frame = decoder.next_frame()
            if frame is None:
                break
            frames.append(frame)
        print(done.returncode, [protocol.type_name(f.type) for f in frames])
        print(frames[-1].json()["message"])
    """)
    status, message = out.split("\n")
    assert status == "1 ['HELLO', 'ERROR']"
    assert "remote_helper.jobs.copy was not shipped with this job" in message


def test_the_helper_loads_zstandard_without_the_platform_module() -> None:
    """zstandard asks `platform` which Python runs it, at its import; the helper answers it
    with a stand-in, and zstandard still loads its C backend."""
    pytest.importorskip("zstandard")
    out = _python("""
        import subprocess, sys
        from bacpac.transport.helper import helper_argv, helper_payload
        from remote_helper.wire import protocol
        probe = "import sys; print(sorted(m for m in sys.modules if m in ('platform', 'zstandard.backend_c')), file=sys.stderr)"
        argv = helper_argv(sys.executable, False)
        stage1 = argv[argv.index("-c") + 1].replace("exec(S)", "exec(S.replace('status = server.main()', " + repr(probe) + " + '; status = server.main()'))")
        argv[argv.index("-c") + 1] = stage1
        done = subprocess.run(argv, input=helper_payload("dup"), capture_output=True, timeout=60)
        decoder = protocol.Decoder()
        decoder.feed(done.stdout)
        print(decoder.next_frame().json()["zstd"], done.stderr.decode().strip())
    """)
    assert out == "zstandard ['zstandard.backend_c']"


def test_client_start_leaves_the_engine_to_the_command() -> None:
    """The commands and the engine (zstandard, the pipeline) are imported by the command that
    runs, and Paramiko by the session that connects: a dup begins its connection on a thread
    first (cli._begin_early), so that its imports and the engine's overlap."""
    out = _python("""
        import sys
        import bacpac.cli
        print(sorted(name for name in sys.modules if name.split(".")[0] in ("zstandard",
                     "paramiko") or name.startswith(("bacpac.commands", "bacpac.engine.pipeline"))))
    """)
    assert out == "[]"
