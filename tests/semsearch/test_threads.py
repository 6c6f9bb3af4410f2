"""No spin-waiting by default (#25): the core sets OpenMP's wait policy before faiss/torch load, a
user's own value wins, and onnxruntime sessions are made without intra-op spinning."""

from __future__ import annotations

import os
import subprocess
import sys

from semsearch.models.runner import RunnerOptions


def _omp_policy(env: dict[str, str]) -> str:
    code = "import semsearch.index, os; print(os.environ['OMP_WAIT_POLICY'])"  # semsearch.index loads faiss
    clean = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_openmp_threads_sleep_unless_the_user_says_otherwise() -> None:
    assert _omp_policy({}) == "PASSIVE"
    assert _omp_policy({"OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE"


def test_onnxruntime_does_not_spin_by_default() -> None:
    assert RunnerOptions().spinning is False
