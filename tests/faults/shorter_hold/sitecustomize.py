"""Loaded at start by a daemon a fault test runs with this folder on PYTHONPATH (Python imports
`sitecustomize` from the path by itself): the first hold after an unconfirmed upload answer
(`agent.platform.upload.HOLD_S`, 10 s) becomes GATE_AGENT_TEST_FIRST_HOLD_S.

Why: tests/faults/test_platform_faults.py waits out that hold in full in each phase whose
answers confirm nothing (lost after commit, success:false), for no more proof: the batch is
sent again under the same request uuid after 2 s as after 10. The cap and the doubling stay
(2, 4, 8, 16 s: the fifth unconfirmed answer, the one that quarantines, is 30 s away, far
past a phase's fault), and nothing else of the daemon changes.
"""

import os

from agent.platform import upload

upload.HOLD_S = (float(os.environ["GATE_AGENT_TEST_FIRST_HOLD_S"]), upload.HOLD_S[1])
