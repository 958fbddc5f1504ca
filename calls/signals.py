"""Signals the product sends to the project's own code."""

from __future__ import annotations

from django.dispatch import Signal

# Sent once per successful post-call analysis, after it is stored, by the worker that ran it:
# receivers get ``analysis`` (CallAnalysis), ``call`` (Call) and ``data`` (the extracted
# fields, checked against the plan's schema). A receiver's exception is logged and does not
# undo the analysis (calls/analysis_jobs.py). Example: calls/example_tools.py.
call_analysed = Signal()
