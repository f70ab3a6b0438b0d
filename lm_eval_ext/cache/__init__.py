"""The request cache: every request's answer stored as it arrives, so a killed run resumes.

``store`` (one SQLite database per cache folder, shared by every rank), ``keys`` (PURE: request keys
and value codecs), ``fingerprint`` (model identity: what decides outputs, and nothing else),
``request_cache`` (look up, write results as they arrive), ``fast_path`` (a fully cached re-run without
torch), ``report`` (PURE: cache figures for the results).
"""
