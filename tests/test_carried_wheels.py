"""benchmarks/carried_wheels.sh (sourced by run_gpu.sh): the two-call carry of the GPU machine's wheels, on the
CPU in a scratch folder laid out as sft_wheels.sh leaves it: the halves join into the original bytes, a
corrupted half or a missing stash stops with a message instead of installing a broken wheel."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "carried_wheels.sh"
WHEEL = "pyarrow-24.0.0-cp312-cp312-manylinux_2_28_x86_64.whl"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("sha256sum") is None,
                                reason="needs bash and sha256sum")  # fmt: skip


def carry(tmp_path: Path, payload: bytes) -> None:
    """sft_wheels.sh's two halves of one big wheel, a small sft wheel and the cudnn-frontend wheel."""
    one, two = tmp_path / ".whl" / "carry1", tmp_path / ".whl" / "carry2"
    one.mkdir(parents=True)
    two.mkdir()
    (one / f"{WHEEL}.part.aa").write_bytes(payload[:1000])
    (two / f"{WHEEL}.part.ab").write_bytes(payload[1000:])
    (two / f"{WHEEL}.sha256").write_text(f"{hashlib.sha256(payload).hexdigest()}  {WHEEL}\n")
    (two / "trl-1.16.0-py3-none-any.whl").write_bytes(b"trl")
    (one / "nvidia_cudnn_frontend-1.32.0-cp312-cp312-manylinux_2_28_x86_64.whl").write_bytes(b"cudnn")


def bash(tmp_path: Path, commands: str) -> subprocess.CompletedProcess:
    script = f"set -euo pipefail; STASH={tmp_path / 'stash'}; source {SCRIPT}; {commands}"
    return subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True)


def test_the_halves_join_into_the_wheels(tmp_path):
    payload = bytes(range(256)) * 10
    carry(tmp_path, payload)
    # call 1 stashes carry1; the next call's carry replaces .whl, so carry1 is gone there
    done = bash(tmp_path, "stash_wheels >/dev/null; rm -rf .whl/carry1; assemble_wheels")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / ".whl" / "sft" / WHEEL).read_bytes() == payload
    assert sorted(p.name for p in (tmp_path / ".whl" / "sft").iterdir()) == sorted([WHEEL, "trl-1.16.0-py3-none-any.whl"])
    assert [p.name for p in (tmp_path / ".whl" / "cudnn").iterdir()][0].startswith("nvidia_cudnn_frontend")


def test_a_corrupted_half_stops_the_call(tmp_path):
    carry(tmp_path, bytes(range(256)) * 10)
    (tmp_path / ".whl" / "carry2" / f"{WHEEL}.part.ab").write_bytes(b"truncated")
    done = bash(tmp_path, "stash_wheels >/dev/null; assemble_wheels; echo installed")
    assert done.returncode == 3 and "installed" not in done.stdout
    assert f"{WHEEL}: sha256 mismatch" in done.stderr


def test_a_second_half_without_the_first_names_the_missing_call(tmp_path):
    carry(tmp_path, bytes(range(256)) * 10)
    done = bash(tmp_path, "assemble_wheels")
    assert done.returncode == 3 and "run 'stash_wheels' with carry1 just before" in done.stderr


def test_nothing_carried_in_halves_is_a_no_op(tmp_path):
    done = bash(tmp_path, "assemble_wheels; echo fine")
    assert done.returncode == 0 and "fine" in done.stdout and not (tmp_path / ".whl").exists()


def carry_fa4(tmp_path: Path, corrupt: bool = False) -> None:
    """fa4_wheels.sh's layout: an xz tarball of the CuTe DSL library split over .whl/fa4a and .whl/fa4b."""
    tree = tmp_path / "tree" / "nvidia_cutlass_dsl" / "dsl_packages" / "cutlass"
    tree.mkdir(parents=True)
    (tree / "__init__.py").write_text("LIBS = 'cu13'\n")
    tarball = tmp_path / "cutlass_dsl_cu13.tar.xz"
    subprocess.run(["tar", "-C", str(tmp_path / "tree"), "-cJf", str(tarball), "."], check=True)
    payload = tarball.read_bytes()
    one, two = tmp_path / ".whl" / "fa4a", tmp_path / ".whl" / "fa4b"
    one.mkdir(parents=True)
    two.mkdir()
    (one / "cutlass_dsl_cu13.tar.xz.part.aa").write_bytes(payload[:100])
    (two / "cutlass_dsl_cu13.tar.xz.part.ab").write_bytes(b"x" if corrupt else payload[100:])
    (two / "cutlass_dsl_cu13.tar.xz.sha256").write_text(f"{hashlib.sha256(payload).hexdigest()}  cutlass_dsl_cu13.tar.xz\n")
    (two / "flash_attn_4-4.0.0b36-py3-none-any.whl").write_bytes(b"fa4")


# pip stood in: the wheels it would install are listed instead
NO_PIP = 'install_wheels() { ls "$1" > installed.txt; export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"; };'


@pytest.mark.skipif(shutil.which("xz") is None or shutil.which("tar") is None, reason="needs xz and tar")
def test_fa4_parts_from_two_calls_unpack_into_the_site(tmp_path):
    carry_fa4(tmp_path)
    site = tmp_path / "site"
    site.mkdir()
    # call 1 stashes fa4a; the next call carries fa4b only
    done = bash(tmp_path, f"SITE={site}; {NO_PIP} stash_fa4 >/dev/null; rm -rf .whl/fa4a; "
                          'install_fa4_wheels; echo "$PYTHONPATH"')  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (site / "nvidia_cutlass_dsl" / "dsl_packages" / "cutlass" / "__init__.py").read_text() == "LIBS = 'cu13'\n"
    assert done.stdout.split()[-1].split(":")[:2] == [f"{site}/nvidia_cutlass_dsl/dsl_packages", str(site)]
    assert "flash_attn_4-4.0.0b36-py3-none-any.whl" in (tmp_path / "installed.txt").read_text()


def test_a_corrupted_fa4_part_or_a_missing_one_stops_the_call(tmp_path):
    carry_fa4(tmp_path, corrupt=True)
    done = bash(tmp_path, f"SITE={tmp_path}; {NO_PIP} install_fa4_wheels; echo installed")
    assert done.returncode == 3 and "cutlass_dsl_cu13.tar.xz: sha256 mismatch" in done.stderr
    assert not (tmp_path / "installed.txt").exists()
    shutil.rmtree(tmp_path / ".whl" / "fa4a")
    shutil.rmtree(tmp_path / "stash")
    done = bash(tmp_path, f"SITE={tmp_path}; {NO_PIP} install_fa4_wheels")
    assert done.returncode == 3 and "carry .whl/fa4a and .whl/fa4b" in done.stderr
